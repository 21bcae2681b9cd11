"""The package's layout tells the story: a rule runs the module of its name, folders hold a handful
of modules each, and no two modules import each other at load time."""

import ast
import re

from conftest import ROOT

# rules that run another rule's module (one module serves a family of rules)
SHARED = {
    "table_coco": "tables", "table_spatial": "tables", "table_arena": "tables", "table_vqa": "tables",
    "table_no_stage1": "tables", "table_ablations": "tables", "table_scaling": "tables", "table_seeds": "tables",
    "evaluate_vqa_more": "evaluate_vqa", "evaluate_reconstruction_fid": "evaluate_fid",
    "prepare_vqa": "prepare_coco", "laion_metadata": "prepare_laion", "download_laion": "prepare_laion",
    "laion_pairs": "prepare_laion",
    "benchmark_toy_standins": "evaluate_standins",
}  # fmt: skip


def rule_modules():
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^(?=rule )", smk.read_text())[1:]:
            name = block.split(":")[0].removeprefix("rule ").strip()
            modules = set(re.findall(r"(?:-m|launch\}) (vlv\.[\w.]+)", block))
            if modules:
                yield smk.stem, name, modules.pop()


def test_a_rule_runs_the_module_of_its_name():
    for smk, rule, module in rule_modules():
        path = ROOT / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"rule {rule} runs {module}, which is not a module"
        assert path.stem == SHARED.get(rule, rule), f"rule {rule} ({smk}.smk) runs {module}"
    stages = {p.stem for p in (ROOT / "vlv/stages").glob("*.py")} - {"__init__"}
    run = {m.rpartition(".")[2] for _, _, m in rule_modules()}
    assert stages <= run, f"modules in vlv/stages/ no rule runs: {stages - run}"


def test_folders_hold_a_handful_of_modules():
    for folder in [ROOT / "vlv", *(p for p in (ROOT / "vlv").iterdir() if p.is_dir() and p.name != "__pycache__")]:
        n = len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
        assert n <= 15, f"{folder.relative_to(ROOT)} holds {n} modules"


def load_time_imports() -> dict[str, set[str]]:
    """vlv module -> the vlv modules it imports at module level (one imported inside a function runs
    later and cannot make loading go round)."""
    graph = {}
    for f in (ROOT / "vlv").rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlv"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("vlv"))
        graph[name] = deps
    return {k: {d for d in v if d in graph and d != k} for k, v in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(n, path):
        state[n] = 1
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return [*path, n, d]
            if d not in state and (found := visit(d, [*path, n])):
                return found
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n, [])):
            return found
    return None


def test_no_import_cycle_at_load_time():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    cycle = find_cycle(load_time_imports())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
