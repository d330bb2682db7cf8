"""vLLM's command line and environment, derived from a deployment's `vllm:` settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cellar.config import ModelDeployment
from cellar.deployments import Artifact, ResolvedDeployment
from cellar.engines.kinds import kind_of
from cellar.engines.launch import memory_estimate
from cellar.engines.vllm.dialect import VllmDialect
from cellar.engines.vllm.launcher import server_args, worker_env
from cellar.errors import InvalidRequest
from cellar.protocol import request_for
from tests.files import fake_checkpoint


def _resolved(tmp_path: Path, template: str | None = None, **vllm: Any) -> ResolvedDeployment:
    ckpt = fake_checkpoint(tmp_path / "ckpt", weights=b"\x00" * 4000)
    spec = ModelDeployment(name="big", source=str(ckpt), engine="vllm", vllm=vllm)
    return ResolvedDeployment(spec, "vllm", "test", Artifact(ckpt, "hf", None), template)


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_settings_become_vllm_arguments(tmp_path: Path) -> None:
    resolved = _resolved(
        tmp_path,
        "{{ messages }}",
        dtype="bfloat16",
        max_model_len=8192,
        max_num_seqs=32,
        gpu_memory_utilization=0.85,
        tensor_parallel_size=4,
        pipeline_parallel_size=2,
        quantization="awq",
        enforce_eager=True,
        distributed_executor_backend="ray",
        lora_modules={"sql": "/adapters/sql", "legal": "/adapters/legal"},
        max_lora_rank=32,
        extra_args=["--seed", "7"],
    )
    args = server_args(resolved, tmp_path / "w.sock", "info")
    assert _flag(args, "--uds") == str(tmp_path / "w.sock")
    assert "--host" not in args and "--port" not in args and "--api-key" not in args
    assert _flag(args, "--model") == str(resolved.path)
    assert _flag(args, "--served-model-name") == "big"
    assert _flag(args, "--dtype") == "bfloat16"
    assert _flag(args, "--max-model-len") == "8192"
    assert _flag(args, "--max-num-seqs") == "32"
    assert _flag(args, "--gpu-memory-utilization") == "0.85"
    assert _flag(args, "--tensor-parallel-size") == "4"
    assert _flag(args, "--pipeline-parallel-size") == "2"
    assert _flag(args, "--quantization") == "awq"
    assert _flag(args, "--distributed-executor-backend") == "ray"
    assert "--enforce-eager" in args and "--enable-lora" in args
    assert _flag(args, "--max-lora-rank") == "32"
    modules = args[args.index("--lora-modules") + 1 : args.index("--lora-modules") + 3]
    assert modules == ["sql=/adapters/sql", "legal=/adapters/legal"]
    assert Path(_flag(args, "--chat-template")).read_text() == "{{ messages }}"
    assert _flag(args, "--generation-config") == "vllm"
    assert args[-2:] == ["--seed", "7"]


def test_defaults_leave_vllm_to_decide(tmp_path: Path) -> None:
    args = server_args(_resolved(tmp_path), tmp_path / "w.sock", "info")
    for flag in ("--max-model-len", "--quantization", "--enforce-eager", "--enable-lora"):
        assert flag not in args
    assert "--distributed-executor-backend" not in args
    assert "--chat-template" not in args


def test_environment_is_offline_and_carries_placement(tmp_path: Path) -> None:
    settings = _resolved(
        tmp_path,
        gpus=[2, 3],
        ray_address="10.0.0.5:6379",
        cpu_kv_cache_space="2GiB",
        env={"NCCL_DEBUG": "WARN", "VLLM_API_KEY": "from-the-config"},
    ).spec.vllm
    env = worker_env(settings, "info", "the-launch-secret")
    assert env["VLLM_API_KEY"] == "the-launch-secret"  # the gateway's, whatever the config says
    assert Path(env["VLLM_RPC_BASE_PATH"]).stat().st_mode & 0o777 == 0o700
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["DO_NOT_TRACK"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["RAY_ADDRESS"] == "10.0.0.5:6379"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["NCCL_DEBUG"] == "WARN"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env  # vLLM binds its threads as it likes
    pinned = worker_env(settings, "info", "secret", cpus="2-3,6")
    assert pinned["VLLM_CPU_OMP_THREADS_BIND"] == "2-3,6"  # to the worker's cores when given


def test_concurrency_context_and_memory_come_from_the_vllm_settings(tmp_path: Path) -> None:
    resolved = _resolved(tmp_path / "a", max_num_seqs=48)
    vllm = kind_of(resolved)
    assert vllm.concurrency(resolved) == 48
    assert vllm.context_window(resolved) == 2048  # the checkpoint's max_position_embeddings
    assert vllm.context_window(_resolved(tmp_path / "b", max_model_len=512)) == 512
    assert memory_estimate(resolved) > 0


def test_response_format_becomes_the_shared_grammar() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    chat = "/v1/chat/completions"
    messages = [{"role": "user", "content": "x"}]
    payload = {
        "model": "m",
        "messages": messages,
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
    }
    sent = VllmDialect().prepare(chat, request_for(chat, payload))
    assert "response_format" not in sent
    assert "root ::=" in sent["structured_outputs"]["grammar"]
    anything = {"model": "m", "prompt": "x", "response_format": {"type": "json_object"}}
    sent = VllmDialect().prepare("/v1/completions", request_for("/v1/completions", anything))
    grammar = sent["structured_outputs"]["grammar"]
    assert 'ws ::= "" | " "' in grammar  # xgrammar wants the empty alternative spelled out
    plain = {"model": "m", "messages": messages, "response_format": {"type": "text"}}
    assert VllmDialect().prepare(chat, request_for(chat, plain)) == plain
    bad = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"$ref": "#/x"}}}
    with pytest.raises(InvalidRequest):
        request = {"model": "m", "messages": messages, "response_format": bad}
        VllmDialect().prepare(chat, request_for(chat, request))
