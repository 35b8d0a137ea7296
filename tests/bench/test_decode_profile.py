"""decode_profile: kernel names fall into the groups its table reports; it and decode_ablation
need a GPU."""

from __future__ import annotations

import pytest

from bench import decode_ablation, decode_profile
from core.compose import compose_config

# kernel names as torch.profiler reported them inside an H200 decode graph
# (bench/results/decode_profile-h200-before.log)
SEEN = {
    "_awq_mma_gemv_kernel": "awq_gemm",
    "_awq_gemv_kernel": "awq_gemm",
    "_awq_gemm_kernel": "awq_gemm",
    "_decode_split_kernel": "attention",
    "_rms_norm_kernel": "norm",
    "_store_kv_kernel": "kv_store",
    "_rotary_kernel": "rotary",
    "_silu_mul_kernel": "silu_mul",
    "nvjet_sm90_hsh_512x8_64x3_4x1_v_bz_TNT": "lm_head",
    "void at::native::vectorized_elementwise_kernel<8, at::native::FillFunctor<c10::Half>, "
    "std::array<char*, 1ul> >": "memset",
    "void at::native::(anonymous namespace)::indexSelectSmallIndex<c10::Half, long, unsigned "
    "int, 2, 2, -2, true>": "embedding",
    "memcpy32_post": "other",
}


@pytest.mark.parametrize("name, group", list(SEEN.items()))
def test_kernels_fall_into_their_groups(name, group):
    assert decode_profile.group_of(name) == group


@pytest.mark.parametrize("task", [decode_profile, decode_ablation])
def test_on_the_cpu_it_says_it_needs_a_gpu(tmp_path, task):
    cfg = compose_config(
        [f"task={task.__name__.split('.')[-1]}", "model=internlm-tiny", "engine.device=cpu",
         f"output_dir={tmp_path}"],
        config_name="bench",
    )  # fmt: skip
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        task.run(cfg)
