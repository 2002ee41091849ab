"""Is a checked-in protoc module the .proto beside it? Compiles the .proto with grpc_tools'
protoc and compares descriptors (a .proto edited without regenerating fails)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pb2

__all__ = ["assert_generated_from"]

ROOT = Path(__file__).resolve().parents[1]


def _all_messages(
    messages: list[descriptor_pb2.DescriptorProto],
) -> list[descriptor_pb2.DescriptorProto]:
    found = []
    for message in messages:
        found += [message, *_all_messages(list(message.nested_type))]
    return found


def assert_generated_from(proto: str, module: ModuleType, out_dir: Path) -> None:
    """`proto`: the .proto's path from the repository root; `module`: its *_pb2 module."""
    path = Path(proto)
    out = out_dir / "set.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(path.parent),
                    f"--descriptor_set_out={out}", proto], cwd=ROOT, check=True)  # fmt: skip
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in _all_messages(list(compiled.message_type)):
        for field in message.field:
            field.ClearField("json_name")  # protoc's --python_out leaves it out of the module
    shipped = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    assert compiled == shipped, f"{module.__name__} is stale: regenerate it from {proto}"
