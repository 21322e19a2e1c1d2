"""The demo corpus text: `help()` topics from `pydoc_data` and docstrings of pure-Python standard-library
modules, collected in a clean interpreter so the corpus depends on the Python version only."""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import platform as _platform
import warnings
from typing import Any

from pgolf.datacommon import DataError

DEMO_MIN_DOC_CHARS = 40

# Pure-Python modules present (and importable without optional C extensions or side effects) on
# CPython 3.10 through 3.13. Fixed and sorted so the corpus is reproducible for a given Python.
DEMO_MODULES: tuple[str, ...] = tuple(sorted("""
argparse ast asyncio.events asyncio.streams asyncio.tasks base64 bdb bisect calendar cmd code codecs
codeop collections colorsys compileall concurrent.futures configparser contextlib copy copyreg csv
dataclasses datetime difflib dis doctest email.headerregistry email.message email.parser email.utils
enum filecmp fileinput fnmatch fractions ftplib functools getopt getpass gettext glob graphlib gzip
hashlib heapq hmac html html.parser http.client http.cookiejar http.cookies http.server imaplib
importlib importlib.metadata inspect io ipaddress json json.decoder json.encoder keyword linecache
locale logging logging.handlers mailbox mimetypes modulefinder multiprocessing.pool netrc numbers
opcode operator optparse pathlib pdb pickle pickletools pkgutil platform plistlib poplib pprint
profile pstats py_compile pyclbr pydoc queue quopri random re reprlib rlcompleter runpy sched secrets
selectors shelve shlex shutil smtplib socket socketserver statistics string stringprep subprocess
symtable sysconfig tabnanny tarfile tempfile textwrap threading timeit token tokenize trace traceback
types typing unittest unittest.mock urllib.parse urllib.request uuid warnings wave weakref webbrowser
xml.dom.minidom xml.etree.ElementTree xml.sax xml.sax.saxutils xmlrpc.client xmlrpc.server zipapp
zipfile zoneinfo
""".split()))


def _clean_doc(doc: Any) -> str | None:
    if not isinstance(doc, str):
        return None
    text = inspect.cleandoc(doc).replace("\x00", " ").strip()
    return text if len(text) >= DEMO_MIN_DOC_CHARS else None


def _module_docstrings(mod: Any) -> list[str]:
    """Docstrings of the module and of the classes/functions/methods it defines itself.

    Objects re-exported from another module are skipped (their docstring belongs to that module),
    and `__doc__` is read directly rather than through inspect.getdoc, which would copy a parent
    class's docstring into every subclass.
    """
    out = [mod.__doc__]
    for _, obj in sorted(vars(mod).items(), key=lambda kv: kv[0]):
        if getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj):
            out.append(obj.__doc__)
            for _, member in sorted(vars(obj).items(), key=lambda kv: kv[0]):
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if inspect.isfunction(member):
                    out.append(member.__doc__)
        elif inspect.isfunction(obj):
            out.append(obj.__doc__)
    return out


def collect_demo_documents() -> tuple[list[str], dict[str, Any]]:
    """The demo documents, collected in a fresh interpreter.

    Libraries imported into this process (torch, Ray, ...) replace some standard-library functions
    with their own (their `__module__` changes, so their docstrings drop out); collecting in a clean
    `python -I` child makes the corpus depend on the Python version only, not on what ran before.
    """
    import subprocess
    import sys

    code = "import json; from pgolf.demo_text import _collect_in_process as c; print(json.dumps(c()))"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise DataError(f"collecting the demo documents failed: {out.stderr.strip()[-2000:]}")
    docs, source = json.loads(out.stdout)
    return docs, source


def _collect_in_process() -> tuple[list[str], dict[str, Any]]:
    """The demo documents in their fixed order, plus a description of where they came from.

    Order is by sha256 of the text: stable for a given Python, and it interleaves help topics and
    docstrings so the validation prefix looks like the training data (as FineWeb's shuffled
    document selection does).
    """
    from pydoc_data.topics import topics

    docs: set[str] = set()
    for key in sorted(topics):
        text = _clean_doc(topics[key])
        if text:
            docs.add(text)
    n_topics = len(docs)
    used: list[str] = []
    missing: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in DEMO_MODULES:
            try:
                mod = importlib.import_module(name)
            except Exception:  # an optional module absent from this build only shrinks the corpus
                missing.append(name)
                continue
            used.append(name)
            for doc in _module_docstrings(mod):
                text = _clean_doc(doc)
                if text:
                    docs.add(text)
    ordered = sorted(docs, key=lambda d: hashlib.sha256(d.encode("utf-8")).hexdigest())
    source = {
        "pydoc_topics": n_topics,
        "docstrings": len(ordered) - n_topics,
        "modules": used,
        "modules_missing": missing,
        "python": _platform.python_version(),
    }
    return ordered, source
