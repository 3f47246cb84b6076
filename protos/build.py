"""Generate, check and lint the maestro.v1 protos: the one command for generated code.

    python protos/build.py generate   # rewrite protos/maestro/v1/*_pb2*.py[i] from the .proto files
    python protos/build.py check      # exit 1 if the committed generated code is stale
    python protos/build.py lint       # buf lint (STANDARD + COMMENTS)

buf comes from the npm registry: `npm ci --prefix protos`.

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


def lint() -> int:
    buf = PROTOS / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        print("buf is not installed: run `npm ci --prefix protos`", file=sys.stderr)
        return 2
    # buf resolves imports inside its workspace only, and cannot fetch googleapis here (no
    # network), so lint a scratch workspace holding our protos plus the google.api imports.
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        shutil.copytree(PROTOS / "maestro", workspace / "maestro", ignore=_only_protos)
        for relative in GOOGLE_API_IMPORTS:
            target = workspace / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_googleapis_root() / relative, target)
        shutil.copyfile(PROTOS / "buf.yaml", workspace / "buf.yaml")
        result = subprocess.run([str(buf), "lint"], cwd=workspace, check=False)
    if result.returncode == 0:
        print("buf lint: ok")
    return result.returncode


def _only_protos(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if not n.endswith(".proto") and not Path(directory, n).is_dir()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["generate", "check", "lint"])
    command = parser.parse_args().command
    if command == "generate":
        generate()
        return 0
    return check() if command == "check" else lint()


if __name__ == "__main__":
    raise SystemExit(main())
