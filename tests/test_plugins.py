"""core/plugins.py and the hooks of core/hookspecs.py, as a plugin author meets them.

Every hook has a ``test_hook_<name>`` here (a new hook without one fails
``test_every_hook_has_a_test``). The third-party example of docs/plugins.md
(examples/nybble-hello-plugin) is built as a wheel, installed into a temporary folder and run
through its entry point, without touching core.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core import hookspecs
from core.hookspecs import hookimpl
from core.kernels import KernelTable
from core.layers.linear import Linear
from core.plugins import BUILTIN_PLUGINS, PluginError, collect, make_plugin_manager
from core.registry import RegistryError
from core.weight_format import WeightFormat

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nybble-hello-plugin"
HOOKS = sorted(n for n, f in vars(hookspecs).items() if hasattr(f, f"{hookspecs.PROJECT}_spec"))


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    assert f"test_hook_{hook}" in globals(), f"add test_hook_{hook} to tests/test_plugins.py"


def test_the_hooks():
    assert HOOKS == [
        "register_chat_templates",
        "register_frontends",
        "register_kernels",
        "register_models",
        "register_weight_formats",
    ]


def collect_with(plugin: object, name: str = "my-plugin"):
    """The registries of the built-in plugins plus ``plugin``."""
    pm = make_plugin_manager(load_external=False)
    pm.register(plugin, name=name)
    pm.check_pending()
    return collect(pm)


class MyFormat(WeightFormat):
    name = "my-format"


def test_hook_register_weight_formats():
    fmt = MyFormat()

    class Plugin:
        @hookimpl
        def register_weight_formats(self, register):
            register(fmt)

    regs = collect_with(Plugin())
    assert regs.weight_formats.get("my-format") is fmt
    assert regs.weight_formats.owner("my-format") == "my-plugin"
    assert {"none", "awq"} <= set(regs.weight_formats.names())


def test_hook_register_models():
    class MyModel(torch.nn.Module):
        pass

    class Plugin:
        @hookimpl
        def register_models(self, register):
            register("MyForCausalLM", MyModel)

    regs = collect_with(Plugin())
    assert regs.models.get("MyForCausalLM") is MyModel
    assert "InternLMForCausalLM" in regs.models


def test_hook_register_chat_templates():
    template = object()

    class Plugin:
        @hookimpl
        def register_chat_templates(self, register):
            register("my-chat", template)

    regs = collect_with(Plugin())
    assert regs.chat_templates.get("my-chat") is template
    assert "internlm-chat" in regs.chat_templates


def test_hook_register_kernels():
    def my_op_torch(x):
        return x + 1

    def my_op_triton(x):
        return x + 2

    class Plugin:
        @hookimpl
        def register_kernels(self, register):
            register("my_op", "torch", my_op_torch)
            register("my_op", "triton", my_op_triton)

    regs = collect_with(Plugin())
    assert KernelTable(regs.kernels, "torch", "cpu").get("my_op") is my_op_torch
    assert KernelTable(regs.kernels, "triton", "cpu").get("my_op") is my_op_triton
    assert KernelTable(regs.kernels, "auto", "cpu").get("my_op") is my_op_torch
    # every op has a torch implementation: the CPU path and the oracle of the others
    ops = {name.rpartition(":")[0] for name in regs.kernels}
    assert ops and all(f"{op}:torch" in regs.kernels for op in ops)


def test_hook_register_frontends():
    calls = []

    class Plugin:
        @hookimpl
        def register_frontends(self, register):
            register("echo", lambda llm, cfg: calls.append((llm, cfg)))

    regs = collect_with(Plugin())
    regs.frontends.get("echo")("llm", "cfg")
    assert calls == [("llm", "cfg")]
    assert {"chat", "api", "gradio", "triton"} <= set(regs.frontends.names())


def test_two_plugins_claiming_one_name_fail_naming_both():
    class Plugin:
        @hookimpl
        def register_frontends(self, register):
            register("chat", lambda llm, cfg: None)

    with pytest.raises(RegistryError) as err:
        collect_with(Plugin(), name="my-chat-plugin")
    assert "'chat' is registered twice" in str(err.value)
    assert "plugins.frontends.plugin" in str(err.value) and "my-chat-plugin" in str(err.value)


def test_builtins_load_as_plugins():
    pm = make_plugin_manager(load_external=False)
    assert [name for name, _ in pm.list_name_plugin()] == list(BUILTIN_PLUGINS)


# -- third-party plugins found through the entry-point group "nybble" ------------------------


def fake_distribution(site: Path, entry_point: str, module: str, source: str) -> None:
    """An installed distribution (as pip leaves it) whose entry point names ``module``."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[nybble]\n{entry_point} = {module}\n")


GOOD = """
from core.hookspecs import hookimpl

@hookimpl
def register_frontends(register):
    register({name!r}, lambda llm, cfg: None)
"""


def test_misspelled_hook_fails_at_start_up(tmp_path, monkeypatch):
    source = GOOD.format(name="spelled").replace("register_frontends", "register_fronends")
    fake_distribution(tmp_path, "typo", "nybble_test_typo_plugin", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NYBBLE_PLUGINS", "typo")
    with pytest.raises(PluginError) as err:
        make_plugin_manager()
    assert "register_fronends" in str(err.value) and "nybble_test_typo_plugin" in str(err.value)
    assert "core/hookspecs.py" in str(err.value)


def test_plugin_that_fails_to_import_names_itself(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "broken", "nybble_test_broken_plugin", "import no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NYBBLE_PLUGINS", "broken")
    with pytest.raises(PluginError) as err:
        make_plugin_manager()
    message = str(err.value)
    assert "plugin 'broken' (nybble_test_broken_plugin) failed to import" in message
    assert "no_such_module" in message and "NYBBLE_PLUGINS" in message


@pytest.mark.parametrize(
    ("setting", "loaded"),
    [(None, {"one", "two"}), ("all", {"one", "two"}), ("one", {"one"}), (" two, one ", {"one", "two"}), ("none", set()), ("", set())],
)  # fmt: skip
def test_nybble_plugins_limits_external_plugins(tmp_path, monkeypatch, setting, loaded):
    fake_distribution(tmp_path, "one", "nybble_test_plugin_one", GOOD.format(name="one"))
    fake_distribution(tmp_path, "two", "nybble_test_plugin_two", GOOD.format(name="two"))
    monkeypatch.syspath_prepend(str(tmp_path))
    if setting is None:
        monkeypatch.delenv("NYBBLE_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("NYBBLE_PLUGINS", setting)
    regs = collect(make_plugin_manager())
    assert set(regs.frontends.names()) & {"one", "two"} == loaded


# -- the example of docs/plugins.md, built and installed as a user would -----------------------


@pytest.fixture(scope="module")
def hello_site(tmp_path_factory) -> Path:
    """examples/nybble-hello-plugin built as a wheel and pip-installed into a temporary folder."""
    work = tmp_path_factory.mktemp("hello-plugin")
    shutil.copytree(EXAMPLE, work / "src")  # building writes build/ and egg-info beside it
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", work / "dist", work / "src"],
        check=True,
        capture_output=True,
    )
    (wheel,) = (work / "dist").glob("nybble_hello_plugin-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", work / "site", wheel],
        check=True,
        capture_output=True,
    )
    return work / "site"


def plugin_env(site: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NYBBLE_PLUGINS", "HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    return env


LIST_PLUGINS = """
import json, os
from core.plugins import collect, make_plugin_manager

seen = {}
for setting in (None, "hello", "none"):
    if setting is None:
        os.environ.pop("NYBBLE_PLUGINS", None)
    else:
        os.environ["NYBBLE_PLUGINS"] = setting
    regs = collect(make_plugin_manager())
    seen[str(setting)] = {
        "frontends": regs.frontends.names(),
        "formats": regs.weight_formats.names(),
        "owner": regs.frontends.owner("hello") if "hello" in regs.frontends else None,
    }
print(json.dumps(seen))
"""


def test_example_plugin_loads_through_its_entry_point(hello_site, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", LIST_PLUGINS],
        env=plugin_env(hello_site),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    for setting in ("None", "hello"):
        assert "hello" in seen[setting]["frontends"] and seen[setting]["owner"] == "hello"
        assert "hello-int8" in seen[setting]["formats"]
    assert "hello" not in seen["none"]["frontends"]  # NYBBLE_PLUGINS=none keeps it out
    assert "hello-int8" not in seen["none"]["formats"]


@pytest.fixture
def int8_format(hello_site, monkeypatch):
    monkeypatch.syspath_prepend(str(hello_site))
    from nybble_hello.int8 import Int8Format

    return Int8Format()


def test_example_weight_format_matches_f_linear(int8_format):
    torch.manual_seed(0)
    sizes, k = [48, 16, 16], 100  # a fused qkv-like layer, filled shard by shard
    method = int8_format.linear_method({}, kernels=None)
    layer = Linear(k, sizes, bias=True, linear_method=method, params_dtype=torch.float32)
    shards = [torch.randn(n, k) * 0.02 for n in sizes]
    for i, w in enumerate(shards):
        layer.load_shard("weight", w, shard=i, source=f"shard{i}")
    bias = torch.randn(sum(sizes)) * 0.1
    layer.load_shard("bias", bias, shard=None, source="bias")
    method.process_weights_after_loading(layer)
    assert not hasattr(layer, "weight") and layer.qweight.dtype == torch.int8  # dense one freed
    assert layer.qweight.abs().amax(dim=1).eq(127).all()  # each row uses the full int8 range

    x = torch.randn(3, 7, k)  # (B, T, in)
    y = layer(x)  # (B, T, out)
    ref = F.linear(x, torch.cat(shards), bias)
    # rounding moves each weight by at most half a step: |y - ref| <= sum_k |x_k| * scale / 2
    bound = x.abs().sum(-1, keepdim=True) * layer.scales / 2 + 1e-5
    assert y.shape == ref.shape == (3, 7, 80)
    assert ((y - ref).abs() <= bound).all()
    assert torch.allclose(y, ref, rtol=0.05, atol=0.02)


def test_example_weight_format_repacks_on_meta(int8_format):
    """Workspaces load by repacking on the meta device, then reading tensors: shapes only."""
    method = int8_format.linear_method({}, kernels=None)
    with torch.device("meta"):
        layer = Linear(64, [32, 32], bias=False, linear_method=method, params_dtype=torch.float16)
        method.process_weights_after_loading(layer)
    assert layer.qweight.shape == (64, 64) and layer.qweight.dtype == torch.int8
    assert layer.scales.shape == (64,) and layer.scales.dtype == torch.float16


def test_nybble_runs_the_example_frontend(hello_site, tmp_path):
    script = Path(sys.executable).parent / "nybble"  # the console script of this Python
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "core.cli"]
    args = ["model=internlm-tiny", "engine=cpu-small", "frontend=hello", "quant=hello-int8"]
    result = subprocess.run(
        [*cmd, *args, "+frontend.extra.prompt=Hi"],
        env=plugin_env(hello_site),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "hello from internlm-tiny (hello-int8 weights): 'Hi' -> '" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_docs_show_the_example_as_it_is():
    """docs/plugins.md quotes the example's modules; they must not drift apart."""
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for name in ("plugin.py", "frontend.py", "int8.py"):
        source = (EXAMPLE / "nybble_hello" / name).read_text()
        if source.startswith('"""'):  # the module docstring is prose on the page
            source = source[source.index('"""', 3) + 3 :]
        assert source.strip() in docs, f"docs/plugins.md no longer shows nybble_hello/{name}"
    assert '[project.entry-points.nybble]\nhello = "nybble_hello.plugin"' in docs


def test_a_frontend_whose_module_is_missing_says_so():
    from plugins.frontends.plugin import lazy_launcher

    with pytest.raises(PluginError) as err:
        lazy_launcher("grpc", "plugins.frontends.grpc")(None, None)
    assert "frontend 'grpc' is not available" in str(err.value) and "chat" in str(err.value)
