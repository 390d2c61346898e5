"""Validate the App Engine app directories the way AppScale does before `appscale deploy`.

Mirrors appscale-tools' Version.from_yaml (runtime and handlers required, boolean threadsafe
for python27, application id pattern) plus the AppScale python27 runtime's constraints
(library versions it ships, pure-Python lib/ only). Needs lib/ built: `make vendor`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
APPS = ["pubsub-sender", "pubsub-receiver"]
PROJECT_ID_RE = re.compile(r"^[a-z][a-z\d\-]{5,29}$")
# Libraries AppScale's python27 runtime (SDK 1.8.4 fork) offers; its defaults are the oldest.
APPSCALE_LIBRARIES = {"webapp2": {"2.3", "2.5.1", "2.5.2"}, "webob": {"1.1.1", "1.2.3"}}
PINNED = {"webapp2": "2.5.2", "webob": "1.2.3"}
FORBIDDEN_SUFFIXES = (".so", ".pyd", ".dylib", ".dll", ".pth")


def load_app_yaml(app: str) -> dict:
    path = ROOT / app / "app.yaml"
    assert path.is_file(), f"{path} missing"
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a YAML mapping"
    return data


@pytest.mark.parametrize("app", APPS)
def test_app_yaml_like_appscale(app: str) -> None:
    cfg = load_app_yaml(app)
    assert cfg.get("runtime") == "python27", "runtime must be python27"
    assert "handlers" in cfg and cfg["handlers"], "handlers missing"
    assert isinstance(cfg.get("threadsafe"), bool), "python27 needs a boolean threadsafe"
    assert cfg["threadsafe"] is True
    assert cfg.get("api_version") in (1, "1")
    app_id = cfg.get("application")
    assert isinstance(app_id, str) and PROJECT_ID_RE.match(app_id), (
        f"application {app_id!r} must match {PROJECT_ID_RE.pattern}"
    )
    assert "service" not in cfg or "module" not in cfg
    env = cfg.get("env_variables", {})
    assert isinstance(env, dict) and all(isinstance(v, str) for v in env.values())


@pytest.mark.parametrize("app", APPS)
def test_handlers_point_at_wsgi_apps(app: str) -> None:
    for handler in load_app_yaml(app)["handlers"]:
        assert "url" in handler, f"handler without url: {handler}"
        re.compile(handler["url"])
        targets = [k for k in ("script", "static_dir", "static_files") if k in handler]
        assert len(targets) == 1, f"handler needs exactly one target: {handler}"
        if "script" in handler:
            module, _, attr = handler["script"].rpartition(".")
            assert module and attr, "python27 threadsafe scripts are module.attribute"
            source = ROOT / app / (module.replace(".", "/") + ".py")
            assert source.is_file(), f"{source} missing"
            assert re.search(rf"^{re.escape(attr)}\s*=", source.read_text(), re.M), (
                f"{source} defines no {attr}"
            )


@pytest.mark.parametrize("app", APPS)
def test_libraries_pinned(app: str) -> None:
    libs = {lib["name"]: str(lib["version"]) for lib in load_app_yaml(app).get("libraries", [])}
    for name, version in PINNED.items():
        assert libs.get(name) == version, f"pin {name} {version}: AppScale's default differs"
    for name, version in libs.items():
        if name in APPSCALE_LIBRARIES:
            assert version in APPSCALE_LIBRARIES[name], f"AppScale has no {name} {version}"


@pytest.mark.parametrize("app", APPS)
def test_includes_exist_or_are_generated(app: str) -> None:
    for inc in load_app_yaml(app).get("includes", []):
        if inc == "secret.yaml":
            ignored = subprocess.run(
                ["git", "check-ignore", "-q", f"{app}/{inc}"], cwd=ROOT, check=False
            )
            assert ignored.returncode == 0, f"{app}/{inc} must be git-ignored"
            path = ROOT / app / inc
            if path.exists():  # made by `make token`
                data = yaml.safe_load(path.read_text())
                token = data["env_variables"]["PUBSUB_VERIFICATION_TOKEN"]
                assert isinstance(token, str) and len(token) >= 32
        else:
            assert (ROOT / app / inc).is_file(), f"{app}: included {inc} missing"


@pytest.mark.parametrize("app", APPS)
def test_vendored_lib_is_pure_python(app: str) -> None:
    lib = ROOT / app / "lib"
    assert lib.is_dir(), f"{lib} missing: run `make vendor` first"
    bad = [
        str(p.relative_to(lib))
        for p in lib.rglob("*")
        if p.is_file() and (p.name.endswith(FORBIDDEN_SUFFIXES) or ".so." in p.name)
    ]
    assert not bad, f"C extensions / .pth files in {lib}: {bad}"
    assert (lib / "pubsub_shared" / "__init__.py").is_file(), "shared package not vendored"
    assert (lib / "pubsub_shared" / "pubsub.v1.json").is_file(), "discovery doc not vendored"
    assert (ROOT / app / "appengine_config.py").is_file()


@pytest.mark.parametrize("app", APPS)
def test_app_vendors_pinned_requirements(app: str) -> None:
    lib = ROOT / app / "lib"
    assert lib.is_dir(), f"{lib} missing: run `make vendor` first"
    for line in (ROOT / app / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        assert "==" in line, f"unpinned requirement {line!r}"
        name, version = line.split("==")
        prefix = re.sub(r"[-_.]+", "_", f"{name}-{version}").lower()
        found = [
            p for p in lib.iterdir() if re.sub(r"[-_.]+", "_", p.name).lower().startswith(prefix)
        ]
        assert found, f"{line} not installed in {lib}"


def check_lib(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "check-lib"), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_check_lib_rejects_c_extensions(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    assert check_lib(tmp_path).returncode == 0
    (tmp_path / "pkg" / "_speedups.so").write_bytes(b"\x7fELF")
    bad = check_lib(tmp_path)
    assert bad.returncode != 0 and "_speedups.so" in bad.stderr
    (tmp_path / "pkg" / "_speedups.so").unlink()
    (tmp_path / "x.pth").write_text("import os")
    bad = check_lib(tmp_path)
    assert bad.returncode != 0 and "x.pth" in bad.stderr
