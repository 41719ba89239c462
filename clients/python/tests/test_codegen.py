"""The generated gRPC code committed in sandpit/_proto is what the protos give today."""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

import pytest

from harness import PACKAGE_ROOT, REPO_ROOT

sys.path.insert(0, str(PACKAGE_ROOT / "tools"))

import gen_protos  # noqa: E402


def _pinned() -> str:
    text = (PACKAGE_ROOT / "requirements-dev.txt").read_text()
    m = re.search(r"^grpcio-tools==(\S+)", text, re.MULTILINE)
    assert m, "requirements-dev.txt pins grpcio-tools"
    return m.group(1)


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    try:
        installed = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        if os.environ.get("SANDPIT_REQUIRE_CODEGEN_CHECK"):
            pytest.fail("grpcio-tools is not installed: pip install -r clients/python/requirements-dev.txt")
        pytest.skip("grpcio-tools is not installed (pip install -r requirements-dev.txt)")
    assert installed == _pinned(), (
        f"grpcio-tools {installed} is installed but {_pinned()} is pinned in requirements-dev.txt; "
        "the generated code would differ for that reason alone"
    )
    proto_root = REPO_ROOT / "crates" / "sandpit-proto" / "proto"
    assert sorted(p.name for p in (proto_root / "sandpit" / "v1").glob("*.proto")), "the protos are where expected"
    gen_protos.generate(tmp_path, proto_root)
    diffs = gen_protos.differences(tmp_path, PACKAGE_ROOT / "sandpit" / "_proto")
    assert not diffs, "sandpit/_proto is out of date: run clients/python/generate.sh\n" + "\n".join(diffs)


# Where the SDK wraps each RPC. A new RPC in the protos fails the test below
# until the SDK wraps it (or says here why not).
WRAPPED = {
    "SandboxService/CreateSandbox": "Client.create",
    "SandboxService/GetSandbox": "Client.sandbox",
    "SandboxService/ListSandboxes": "Client.sandboxes",
    "SandboxService/ExtendSandbox": "Client.extend",
    "SandboxService/DeleteSandbox": "Client.delete",
    "SandboxService/WatchSandboxes": "Client.watch",
    "SandboxService/Exec": "Sandbox.exec",
    "SandboxService/ExecInteractive": "Sandbox.exec",  # with stdin=
    "SandboxService/PullImage": "Client.pull_image",
    "SandboxService/CopyIn": "Sandbox.upload",
    "SandboxService/CopyOut": "Sandbox.download",
    "SandboxService/PortForward": "Sandbox.port_forward",
    "RegisterService/RegisterExperiment": "Client.register",
    "RegisterService/GetExperiment": "Client.experiment",
    "RegisterService/ListExperiments": "Client.experiments",
    "RegisterService/ApproveExperiment": "Client.approve",
    "RegisterService/RejectExperiment": "Client.reject",
    "RegisterService/CloseExperiment": "Client.close_experiment",
    "RegisterService/AddRisk": "Client.add_risk",
    "RegisterService/UpdateRisk": "Client.update_risk",  # and Client.review_risk
    "RegisterService/RecordAssessment": "Client.record_assessment",
    "RegisterService/UpdateTransparency": "Client.update_transparency",
    "AuditService/QueryAuditLog": "Client.audit_log",
    "AuditService/WatchAuditLog": "Client.watch_audit_log",
    "AuditService/VerifyAuditLog": "Client.verify_audit_log",
    "AuditService/GetCheckpoint": "Client.checkpoint",
    "AuditService/Export": "Client.export",
    "AuditService/ListActiveExperiments": "Client.active_experiments",
    "ProfileService/ListProfiles": "Client.profiles",
    "ProfileService/GetProfile": "Client.profile",
    "ProfileService/ValidateProfile": "Client.validate_profile",
    "ProfileService/ReloadProfiles": "Client.reload_profiles",
    "ProfileService/ListPools": "Client.pools",
}


def test_every_rpc_is_generated_and_wrapped() -> None:
    """Each rpc of each .proto is in the committed stubs and has an SDK method."""
    import sandpit
    from sandpit._proto.sandpit.v1 import audit_pb2_grpc, profile_pb2_grpc, register_pb2_grpc, sandbox_pb2_grpc

    modules = {"audit": audit_pb2_grpc, "profile": profile_pb2_grpc, "register": register_pb2_grpc,
               "sandbox": sandbox_pb2_grpc}  # fmt: skip
    proto_dir = REPO_ROOT / "crates" / "sandpit-proto" / "proto" / "sandpit" / "v1"
    seen = set()
    for name, module in modules.items():
        text = (proto_dir / f"{name}.proto").read_text()
        for service, body in re.findall(r"service (\w+) \{(.*?)\n\}", text, re.DOTALL):
            stub = getattr(module, f"{service}Stub")(_FakeChannel())
            for method in re.findall(r"rpc (\w+)\(", body):
                assert hasattr(stub, method), f"{service}.{method} is not in the generated stub"
                seen.add(f"{service}/{method}")
    assert seen == set(WRAPPED), f"RPCs not wrapped: {sorted(seen - set(WRAPPED))}; gone: {sorted(set(WRAPPED) - seen)}"
    for where in WRAPPED.values():
        cls, attr = where.split(".")
        assert callable(getattr(getattr(sandpit, cls), attr)), where


class _FakeChannel:
    def __getattr__(self, name: str) -> object:
        return lambda *a, **k: object()
