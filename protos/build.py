"""Generate, check and lint the maestro.v1 protos: the one command for generated code.

    python protos/build.py generate   # rewrite protos/maestro/v1/*_pb2*.py[i] from the .proto files
    python protos/build.py check      # exit 1 if the committed generated code is stale
    python protos/build.py lint       # buf lint (STANDARD + COMMENTS)
    python protos/build.py breaking   # buf breaking (FILE) against the protos of HEAD~1

buf comes from the npm registry: `npm ci --prefix protos`.

`breaking` compares the protos in the working tree with those of the previous commit (HEAD~1; in
CI, the commit under test against its parent, or for a merge, the branch it was merged into).
A clone without that commit (shallow, or a single commit) skips it with a message.

Generated code sits beside its .proto files so that `protos/` is an import root: the generated
modules import each other as `maestro.v1.*`, exactly their proto package. grpcio-tools and
mypy-protobuf are pinned in the lock file, so the output is reproducible byte for byte.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
PACKAGE_DIR = PROTOS / "maestro" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
# The protos with their comments (source info), which server reflection serves so that
# `grpcurl describe` prints the documented contract; generated modules drop comments.
DESCRIPTOR_SET = "descriptor_set.binpb"
# The googleapis protos we import (field behaviour, resource annotations, the google.rpc.Status
# of in-message errors) come from the pinned googleapis-common-protos wheel, which ships the
# .proto sources beside its generated modules. Paths are relative to the wheel's import root.
GOOGLE_API_IMPORTS = (
    "google/api/field_behavior.proto",
    "google/api/resource.proto",
    "google/rpc/status.proto",
)
PREVIOUS = "HEAD~1"
INIT_TEXT = (
    '"""Generated maestro.v1 protobuf and gRPC modules. Do not edit: run protos/build.py."""\n'
)


def _googleapis_root() -> Path:
    import google.api.field_behavior_pb2 as field_behavior

    return Path(field_behavior.__file__).resolve().parent.parent.parent


def _grpc_tools_include() -> Path:
    import grpc_tools

    return Path(grpc_tools.__file__).resolve().parent / "_proto"


def _proto_files() -> list[Path]:
    return sorted(PACKAGE_DIR.glob("*.proto"))


def _generate_into(out_root: Path) -> None:
    """Run protoc (grpcio-tools) with the mypy-protobuf plugins; write under out_root/maestro/v1."""
    from grpc_tools import protoc

    (out_root / "maestro" / "v1").mkdir(parents=True, exist_ok=True)
    plugin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{_googleapis_root()}",
        f"-I{_grpc_tools_include()}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        "--include_source_info",
        f"--descriptor_set_out={out_root / 'maestro' / 'v1' / DESCRIPTOR_SET}",
        *(str(path.relative_to(PROTOS)) for path in _proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    (out_root / "maestro" / "v1" / "__init__.py").write_text(INIT_TEXT)


def _generated_files(directory: Path) -> set[str]:
    names = {p.name for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
    return names | {"__init__.py", DESCRIPTOR_SET}


def generate() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _generate_into(Path(tmp))
        fresh = Path(tmp) / "maestro" / "v1"
        for stale in _generated_files(PACKAGE_DIR) - _generated_files(fresh):
            (PACKAGE_DIR / stale).unlink(missing_ok=True)
        for name in _generated_files(fresh):
            shutil.copyfile(fresh / name, PACKAGE_DIR / name)
    print(f"generated {len(_proto_files())} protos into {PACKAGE_DIR.relative_to(PROTOS.parent)}")


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        _generate_into(Path(tmp))
        fresh = Path(tmp) / "maestro" / "v1"
        expected, present = _generated_files(fresh), _generated_files(PACKAGE_DIR)
        stale = sorted(expected ^ present)
        stale += sorted(
            name
            for name in expected & present
            if not filecmp.cmp(fresh / name, PACKAGE_DIR / name, shallow=False)
        )
    if stale:
        print("generated code is stale; run `python protos/build.py generate`:", *stale, sep="\n  ")
        return 1
    print("generated code is up to date")
    return 0


def _buf() -> Path | None:
    buf = PROTOS / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        print("buf is not installed: run `npm ci --prefix protos`", file=sys.stderr)
        return None
    return buf


def _workspace(workspace: Path, protos: dict[str, bytes]) -> Path:
    """A scratch buf workspace holding `protos` (paths under protos/), the google.api imports
    and our buf.yaml. buf resolves imports inside its workspace only, and cannot fetch googleapis
    here (no network), so `buf` on protos/ itself, or on `.git#ref=...,subdir=protos`, fails
    with "imported file does not exist"."""
    files = {
        relative: (_googleapis_root() / relative).read_bytes() for relative in GOOGLE_API_IMPORTS
    }
    files.update(protos)
    files["buf.yaml"] = (PROTOS / "buf.yaml").read_bytes()
    for relative, content in files.items():
        target = workspace / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return workspace


def _working_protos() -> dict[str, bytes]:
    return {
        path.relative_to(PROTOS).as_posix(): path.read_bytes()
        for path in sorted((PROTOS / "maestro").rglob("*.proto"))
    }


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    """git in protos/, wherever the checkout's root is: paths in and out are relative to it."""
    try:
        return subprocess.run(["git", *args], cwd=PROTOS, capture_output=True, check=False)
    except FileNotFoundError:  # no git at all: as good as no history
        return subprocess.CompletedProcess(["git", *args], 127, b"", b"git is not installed")


def _committed_protos(commit: str) -> dict[str, bytes]:
    listed = _git("ls-tree", "-r", "-z", "--name-only", commit, "--", "maestro")
    if listed.returncode != 0:
        raise SystemExit(f"git ls-tree {commit} failed: {listed.stderr.decode().strip()}")
    protos = {}
    for name in listed.stdout.decode().split("\0"):
        if name.endswith(".proto"):
            shown = _git("show", f"{commit}:./{name}")
            if shown.returncode != 0:
                raise SystemExit(
                    f"git show {commit}:{name} failed: {shown.stderr.decode().strip()}"
                )
            protos[name] = shown.stdout
    return protos


def lint() -> int:
    buf = _buf()
    if buf is None:
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workspace = _workspace(Path(tmp), _working_protos())
        result = subprocess.run([str(buf), "lint"], cwd=workspace, check=False)
    if result.returncode == 0:
        print("buf lint: ok")
    return result.returncode


def breaking() -> int:
    buf = _buf()
    if buf is None:
        return 2
    shallow = _git("rev-parse", "--is-shallow-repository")
    if shallow.returncode != 0:
        reason = shallow.stderr.decode().strip()
        if shallow.returncode == 127 or "not a git repository" in reason:
            print(f"buf breaking: skipped, no git history here ({reason})")
            return 0
        print(f"buf breaking: git failed: {reason}", file=sys.stderr)  # e.g. dubious ownership
        return 2
    resolved = _git("rev-parse", "--verify", "--quiet", f"{PREVIOUS}^{{commit}}")
    if resolved.returncode != 0:
        kind = "a shallow clone" if shallow.stdout.strip() == b"true" else "the first commit"
        print(f"buf breaking: skipped, no previous commit ({PREVIOUS}) to compare with: {kind}")
        return 0
    commit = resolved.stdout.decode().strip()
    previous = _committed_protos(commit)
    if not previous:
        print(f"buf breaking: skipped, {PREVIOUS} ({commit[:12]}) has no maestro protos")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        current = _workspace(Path(tmp, "current"), _working_protos())
        against = _workspace(Path(tmp, "against"), previous)
        result = subprocess.run(
            [str(buf), "breaking", ".", "--against", str(against)], cwd=current, check=False
        )
    if result.returncode == 0:
        print(f"buf breaking: ok against {PREVIOUS} ({commit[:12]})")
    else:
        print(f"buf breaking: the changes above break the contract of {PREVIOUS} ({commit[:12]})")
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["generate", "check", "lint", "breaking"])
    command = parser.parse_args().command
    if command == "generate":
        generate()
        return 0
    return {"check": check, "lint": lint, "breaking": breaking}[command]()


if __name__ == "__main__":
    raise SystemExit(main())
