"""The house rules: one source of defaults, imports that run one way."""

import ast
import re
import tomllib
from pathlib import Path

from sltestbed import train
from sltestbed.base_model import BaseSpec
from sltestbed.experiment import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sltestbed", "strategies", "app", "harness", "analysis")


def test_the_flower_run_config_is_the_experiment_configs_defaults():
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = ExperimentConfig().to_dict()
    assert list(app_config) == list(defaults)  # key for key, in the same order
    for key, value in defaults.items():
        assert app_config[key] == value and type(app_config[key]) is type(value), key


def test_the_train_command_takes_its_defaults_from_the_experiment_config():
    args = train.parse_args([])
    cfg = ExperimentConfig()
    for name in ("dataset", "preset", "batch_size", "seed", "test_fraction", "cut", "labels", "distortion_weight",
                 "base", "base_epochs", "base_lr", "lr"):
        assert getattr(args, name) == getattr(cfg, name), name
    assert args.cache_dir == cfg.cache_dir
    # so the centralized reference is the Flower app's base model for the same seed
    assert train.base_spec(args) == BaseSpec.of(cfg)


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The modules a file imports (relative imports resolved), as written."""
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles


def test_the_library_is_flower_free_and_the_client_app_needs_no_strategy():
    for path in (ROOT / "sltestbed").rglob("*.py"):
        assert not any(m == "flwr" or m.startswith(("flwr.", "app", "harness", "strategies")) for m in _imports(path)), path
    client_side = _imports(ROOT / "app" / "client_app.py")
    assert not any(m.startswith("strategies") for m in client_side)
    for path in (ROOT / "strategies").rglob("*.py"):  # strategies reach clients through a Transport
        assert not any(m.startswith(("flwr", "app", "harness")) for m in _imports(path)), path
    for path in (ROOT / "analysis").rglob("*.py"):  # tables and figures without torch
        assert not any(m == "torch" or m.startswith("torch.") for m in _imports(path)), path


def test_module_names_are_unique_and_library_modules_short():
    modules = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    names = [p.name for p in modules]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "sltestbed").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_only_the_label_protocol_branches_on_the_labels_mode():
    """Where the labels are is asked of `label_protocol`, never compared with a mode's name."""
    name = r"""["'](?:u-shaped|client|server)["']"""
    mode = re.compile(rf"""labels\s*(?:==|!=)\s*["']|{name}\s*(?:==|!=)|(?:==|!=)\s*{name}|"""
                      rf"""labels\s+(?:not\s+)?in\s+[(\[{{]\s*{name}""")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                 if p.name != "label_protocol.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if mode.search(line.split("#")[0])]
    assert offenders == []
    assert mode.search('if cfg.labels == "client":') and mode.search('x = "u-shaped" != y')
    assert mode.search('if labels in ("client", "u-shaped"):') and not mode.search("if self.labels != default.labels:")
