"""The offline agents do real, deterministic analysis of what they are given."""

from __future__ import annotations

from conveyor.executor.backends.base import MalformedOutput, parse_output
from conveyor.executor.builtin import ANALYSES, Payload
from conveyor.executor.builtin.dev import parse_diff

DIFF = """diff --git a/app/db.py b/app/db.py
--- a/app/db.py
+++ b/app/db.py
@@ -1,3 +1,5 @@
 import sqlite3
+import subprocess
+cur.execute("SELECT * FROM users WHERE id = " + user_id)
+subprocess.run(cmd, shell=True)
 def f():
-    pass
+    return requests.get(url, verify=False)
diff --git a/tests/test_db.py b/tests/test_db.py
new file mode 100644
--- /dev/null
+++ b/tests/test_db.py
@@ -0,0 +1,2 @@
+def test_f():
+    assert f()
"""


def run(agent: str, value: object, prompt: str | None = None):  # type: ignore[no-untyped-def]
    analysis = ANALYSES[agent]
    assert analysis is not None
    return analysis(Payload.of(value, prompt), agent)


def test_dev_reviews_a_unified_diff() -> None:
    changes = parse_diff(DIFF)
    assert [c.path for c in changes] == ["app/db.py", "tests/test_db.py"]
    assert changes[0].added[0] == (2, "import subprocess") and changes[0].removed == 1 and changes[1].new
    body = run("dev", {"data": {"diff": DIFF}})
    assert "+6/-1 lines (small change)" in body.summary and "tests changed: tests/test_db.py" in body.summary
    found = "\n".join(body.suggestions)
    assert "app/db.py:3: SQL built by string formatting" in found
    assert "app/db.py:4: runs a shell command" in found
    assert "app/db.py:6: disables TLS certificate verification" in found


def test_dev_asks_for_tests_when_none_changed() -> None:
    body = run("dev", {"diff": "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a = 1\n+a = 2\n"})
    assert "no tests changed for 1 changed source file: x.py" in body.suggestions


def test_qa_lints_python_and_finds_committed_secrets() -> None:
    files = {
        "app/main.py": "import os, json\n\ndef f(x=[]):\n    if x == None:\n        return eval(x)\n",
        "app/broken.py": "def f(:\n",
        "config/settings.py": 'AWS_KEY = "AKIAIOSFODNN7EXAMPLF"\npassword = "hunter2-Xq9!zR"\n',
        ".env": "TOKEN=1",
    }
    body = run("qa", {"files": files})
    found = "\n".join(body.suggestions)
    assert "app/broken.py:1: syntax error" in found
    assert "app/main.py:3: mutable default argument in f()" in found
    assert "app/main.py:4: comparison to None" in found
    assert "app/main.py:5: eval() runs arbitrary code" in found
    assert "app/main.py:1: 'json' imported but unused" in found
    assert "config/settings.py:1: possible AWS access key id committed (AKIA…)" in found
    assert "config/settings.py:2: possible secret in password" in found
    assert ".env: a sensitive file is committed" in found
    assert "AKIAIOSFODNN7EXAMPLF" not in found  # secrets are masked in the report


def test_qa_offers_whitespace_fixes_as_a_diff() -> None:
    body = run("qa", {"files": {"a.py": "x = 1   \ny = 2"}})
    assert body.files_changed == ["a.py"]
    assert (
        isinstance(body.code_diff, str) and "-x = 1   \n" in body.code_diff and "+x = 1\n" in body.code_diff
    )


def test_architect_summarises_structure_and_import_cycles() -> None:
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "from . import a\n",
        "main.py": "import pkg.a\n",
        "package.json": '{"dependencies": {"react": "18"}, "scripts": {"dev": "vite"}}',
    }
    body = run("architect", {"files": files, "name": "shop"})
    assert "5 files" in body.summary and "entry points: main.py" in body.summary
    assert "project: shop" in body.summary and "package.json: 1 dependency, scripts dev" in body.summary
    assert (
        body.suggestions[0]
        == "import cycle: pkg.a -> pkg.b -> pkg.a; move the shared part into its own module"
    )


def test_pm_prioritises_requirements_and_flags_vague_words() -> None:
    body = run(
        "pm", {}, prompt="- Users must sign up with email\n- It should be fast\n- Could add a dark mode"
    )
    assert body.suggestions[:3] == [
        "[Must] Users must sign up with email",
        "[Should] It should be fast",
        "[Could] Could add a dark mode",
    ]
    assert any(s.startswith("clarify 'fast'") for s in body.suggestions)


def test_ux_checks_accessibility() -> None:
    html = (
        '<html><head></head><body><img src="a.png"><button></button><h1>T</h1><h3>S</h3>'
        "<style>\n.muted { color: #999999; background-color: #ffffff; }\n</style></body></html>"
    )
    found = "\n".join(run("ux-design-expert", {"files": {"index.html": html}}).suggestions)
    assert "<html> without lang" in found and "<img> without alt" in found
    assert "<button> without text" in found and "heading jumps from h1 to h3" in found
    assert "index.html:2: '.muted' text contrast 2.85:1 is below WCAG AA 4.5:1" in found


def test_every_agent_says_honestly_when_there_is_nothing_to_work_on() -> None:
    for agent in ("dev", "qa", "architect", "pm", "ux-design-expert"):
        assert "no " in run(agent, {}).summary


def test_model_output_is_validated_into_the_contract() -> None:
    assert parse_output('```json\n{"summary": "ok", "suggestions": ["a"]}\n```', "m").suggestions == ["a"]
    assert parse_output('Here: {"result": {"summary": "wrapped"}}', "m").summary == "wrapped"
    for bad, says in (
        ("plain words", "no JSON object found"),
        ('{"summary": 3}', "does not match the result contract"),
        ('{"summary": " "}', "empty summary"),
        ("", "empty answer"),
    ):
        try:
            parse_output(bad, "m")
        except MalformedOutput as exc:
            assert says in str(exc)
        else:
            raise AssertionError(f"accepted {bad!r}")
