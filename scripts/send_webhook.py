"""Send one correctly signed Lovable webhook: ``python scripts/send_webhook.py [--type T] [--url U]``.

The signature is the default Lovable scheme: X-Lovable-Signature = "sha256=" +
hex(HMAC-SHA256(secret, "{timestamp}.{raw body}")), X-Lovable-Timestamp = unix seconds.
The secret: --secret, else LOVABLE_WEBHOOK_SECRET, else the one ``make run`` keeps in
.data/local-keys.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import httpx

from conveyor.shared.domain.signing import lovable_sign

SAMPLE_DIFF = """\
diff --git a/app/auth.py b/app/auth.py
--- a/app/auth.py
+++ b/app/auth.py
@@ -1,3 +1,6 @@
 import os
+API_KEY = "sk_live_0123456789abcdef0123456789"
+def login(user, password):
+    return eval(user)
"""


KEYS = (
    Path(os.environ.get("RUN_DATA_DIR") or Path(__file__).resolve().parent.parent / ".data")
    / "local-keys.json"
)


def default_secret() -> str | None:
    if os.environ.get("LOVABLE_WEBHOOK_SECRET"):
        return os.environ["LOVABLE_WEBHOOK_SECRET"]
    try:
        value = json.loads(KEYS.read_text()).get("LOVABLE_WEBHOOK_SECRET")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '3100')}/api/webhooks/lovable")
    p.add_argument("--secret", default=default_secret())
    p.add_argument("--type", default="code.review_requested")
    p.add_argument("--project", default="demo-project")
    args = p.parse_args()
    if not args.secret:
        p.error(f"no secret: pass --secret, set LOVABLE_WEBHOOK_SECRET, or run `make run` once ({KEYS})")

    event_id = f"evt_{uuid.uuid4().hex[:16]}"
    body = json.dumps(
        {
            "id": event_id,
            "type": args.type,
            "project_id": args.project,
            "data": {
                "diff": SAMPLE_DIFF,
                "files": {"app/auth.py": "import os\n"},
                "prompt": "Review this change",
            },
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        separators=(",", ":"),
    ).encode()
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Lovable-Timestamp": str(ts),
        "X-Lovable-Signature": lovable_sign(args.secret, ts, body),
    }
    r = httpx.post(args.url, content=body, headers=headers, timeout=10)
    print(r.status_code, r.text)
    return 0 if r.status_code < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
