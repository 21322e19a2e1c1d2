"""platform/ must never shadow the standard library module `platform` (design.md)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_stdlib_platform_wins_from_repo_root():
    out = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("Linux", "Darwin", "Windows")


def test_platform_folder_is_not_a_package():
    assert not os.path.exists(os.path.join(ROOT, "platform", "__init__.py"))


def test_cli_help_does_not_import_heavy_modules():
    code = ("import sys; from pgolf.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'ray', 'mlflow') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
