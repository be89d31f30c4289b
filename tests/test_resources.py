"""Resource plans for training workers, data tasks and scoring actors."""

from __future__ import annotations

import pytest

from bertclf.resources import CPU_BATCH_BUDGET, GPU_BATCH_BUDGET, plan_scoring, plan_training, use_bf16


def _fits(plan, cpus):
    return plan.cpus_per_worker * plan.num_workers + plan.data_cpus <= cpus + 1e-9


def test_small_cpu_node_leaves_room_for_data():
    plan = plan_training({"CPU": 2}, 2)
    assert plan.num_workers == 2 and not plan.use_gpu
    assert plan.data_cpus > 0
    assert plan.cpus_per_worker > 0
    assert _fits(plan, 2)
    assert plan.torch_threads >= 1
    assert "2 train worker(s)" in plan.describe()


@pytest.mark.parametrize("cpus,workers", [(1, 1), (1, 2), (2, 1), (4, 2), (8, 3), (16, 2), (64, 4), (96, 2)])
def test_cpu_plans_always_leave_data_cpus(cpus, workers):
    plan = plan_training({"CPU": cpus}, workers)
    assert not plan.use_gpu
    assert plan.data_cpus > 0 and _fits(plan, cpus)
    assert plan.cpus_per_worker <= 8
    assert plan.cpus_per_worker * 4 == int(plan.cpus_per_worker * 4)  # quarter CPUs
    assert plan.torch_threads >= 1


def test_gpu_cluster_uses_gpus():
    plan = plan_training({"CPU": 16, "GPU": 4}, 4)
    assert plan.use_gpu and plan.num_workers == 4
    assert 1 <= plan.cpus_per_worker <= 4
    assert _fits(plan, 16)
    assert "GPU" in plan.describe()


def test_gpu_can_be_turned_off():
    plan = plan_training({"CPU": 16, "GPU": 4}, 2, use_gpu=False)
    assert not plan.use_gpu and _fits(plan, 16)


def test_too_many_gpu_workers():
    with pytest.raises(ValueError, match="4 GPU workers"):
        plan_training({"CPU": 16, "GPU": 2}, 4)
    with pytest.raises(ValueError, match="GPU"):
        plan_training({"CPU": 16}, 1, use_gpu=True)


def test_explicit_cpus_per_worker():
    plan = plan_training({"CPU": 8}, 2, cpus_per_worker=2)
    assert plan.cpus_per_worker == 2 and plan.torch_threads == 2 and _fits(plan, 8)
    with pytest.raises(ValueError, match="does not fit"):
        plan_training({"CPU": 2}, 2, cpus_per_worker=2)
    with pytest.raises(ValueError, match="does not fit"):
        plan_training({"CPU": 4}, 1, cpus_per_worker=0)


def test_too_many_workers_for_cpus():
    with pytest.raises(ValueError, match="does not fit"):
        plan_training({"CPU": 1}, 8)


@pytest.mark.parametrize("cluster,workers,explicit", [
    ({"CPU": 2}, 2, 1.0),           # the docstring's naive plan, asked for explicitly
    ({"CPU": 4, "GPU": 4}, 4, None),  # auto GPU plan: max(1.0, 0.75) CPU each uses every CPU
])
def test_plan_never_starves_data_tasks(cluster, workers, explicit):
    try:
        plan = plan_training(cluster, workers, cpus_per_worker=explicit)
    except ValueError:
        return  # refusing is fine
    assert _fits(plan, cluster["CPU"])


def test_scoring_cpu_only_uses_all_cpus():
    for cpus in (2, 7, 16):
        plan = plan_scoring({"CPU": cpus})
        assert not plan.use_gpu
        assert plan.num_actors * plan.cpus_per_actor == cpus
        assert plan.torch_threads >= 1


def test_scoring_cpu_per_actor_setting():
    plan = plan_scoring({"CPU": 16}, cpus_per_actor=4)
    assert (plan.num_actors, plan.cpus_per_actor, plan.torch_threads) == (4, 4.0, 4)
    plan = plan_scoring({"CPU": 16}, cpus_per_actor=2)
    assert (plan.num_actors, plan.cpus_per_actor) == (8, 2)
    with pytest.raises(ValueError, match="do not fit a cluster with 4 CPU"):
        plan_scoring({"CPU": 4}, num_actors=3, cpus_per_actor=2)


def test_scoring_gpu_one_actor_per_gpu():
    plan = plan_scoring({"CPU": 16, "GPU": 4})
    assert plan.use_gpu and plan.num_actors == 4
    assert plan.num_actors * plan.cpus_per_actor <= 16 and plan.cpus_per_actor >= 1
    assert "scoring actor" in plan.describe()


@pytest.mark.parametrize("cpus, gpus, tokenizers",
                         [(48, 4, 44), (16, 4, 12), (16, 1, 12), (8, 1, 7), (4, 1, 3), (2, 1, 1), (6, 4, 2)])
def test_gpu_plan_feeds_each_gpu_from_cpu_tokenizers_within_the_cpus(cpus, gpus, tokenizers):
    plan = plan_scoring({"CPU": cpus, "GPU": gpus})
    assert (plan.num_actors, plan.cpus_per_actor, plan.tokenizers) == (gpus, 1.0, tokenizers)
    assert plan.num_actors * plan.cpus_per_actor + plan.tokenizers <= cpus
    assert (plan.max_tokens_per_batch, plan.max_batch_rows) == GPU_BATCH_BUDGET
    assert "tokenize stage" in plan.describe()


def test_gpu_plan_without_a_spare_cpu_for_tokenizing():
    with pytest.raises(ValueError, match="tokenize stage"):
        plan_scoring({"CPU": 1, "GPU": 1})
    fused = plan_scoring({"CPU": 1, "GPU": 1}, tokenize_stage="fused")  # the GPU actor tokenizes itself
    assert fused.tokenizers == 0 and fused.use_gpu and fused.cpus_per_actor == 1


def test_cpu_plan_is_fused_unless_asked_and_budgets_can_be_set():
    plan = plan_scoring({"CPU": 2})
    assert plan.tokenizers == 0 and (plan.max_tokens_per_batch, plan.max_batch_rows) == CPU_BATCH_BUDGET
    separate = plan_scoring({"CPU": 16}, tokenize_stage="separate")
    assert separate.tokenizers == 2 and separate.num_actors == 14
    assert plan_scoring({"CPU": 2}, max_tokens_per_batch=512, max_batch_rows=8).max_tokens_per_batch == 512


def test_use_bf16_explicit_choices():
    assert use_bf16("bf16", "cpu") is True
    assert use_bf16("fp32", "cuda") is False


@pytest.mark.parametrize("ceiling, expected", [("avx2", "avx2"), ("avx512", "avx512"), ("amx", "avx512_bf16"),
                                               ("none", "x86_64"), (None, "avx512_bf16")])
def test_cpu_class_is_capped_at_what_torch_can_use(monkeypatch, ceiling, expected):
    """An AVX512-BF16 host whose torch is held to AVX2 (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA) is an AVX2 CPU."""
    from bertclf import resources

    monkeypatch.setattr(resources, "cpu_flags", lambda: ("host", frozenset({"avx2", "avx512f", "avx512_bf16"})))
    monkeypatch.setattr(resources, "torch_cpu_ceiling", lambda: ceiling)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert resources.cpu_class() == expected
    assert resources.cpu_has_native_bf16() == (expected == "avx512_bf16")
    assert resources.cpu_class(frozenset({"avx2", "avx512f", "avx512_bf16"}), "x86_64") == "avx512_bf16", \
        "flags given: the class of those flags, not of this process"


def test_isa_variables_steer_the_cpu_class_in_a_fresh_process():
    import os
    import subprocess
    import sys

    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, "-c", "from bertclf.resources import cpu_class, use_bf16;"
                          "print(cpu_class(), use_bf16('auto', 'cpu'))"], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["x86_64", "False"], out.stderr[-500:]
