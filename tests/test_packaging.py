import re
import subprocess
import sys
from pathlib import Path

import pnp_stable

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]


def test_console_script_prints_version():
    out = subprocess.run([sys.executable, "-m", "pnp_stable.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"pnp-stable {pnp_stable.__version__}"
    assert re.match(r"\d+\.\d+\.\d+", pnp_stable.__version__)


def test_readme_python_blocks_run_verbatim(capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_sections_come_in_the_front_door_order():
    headings = re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), flags=re.M)
    assert headings == ["Set up", "Command line", "Python", "Your own operator and denoiser",
                        "What the certificate and the verdict mean", "Benchmarks", "Train your own",
                        "Certified robust classification", "Citation"]
    setup = (ROOT / "README.md").read_text().split("## Set up")[1].split("##")[0]
    assert "make demo" in setup and "make test" in setup


def test_make_bench_runs_exactly_the_commands_recorded_in_the_results_files():
    recipe = (ROOT / "Makefile").read_text().split("\nbench: $(STAMP)\n")[1].split("\n\n")[0]
    in_makefile = sorted(line.strip().replace("$(BIN)", ".venv/bin") for line in recipe.splitlines())
    recorded = sorted(re.search(r"^- command: `(.*)`$", path.read_text(), re.M).group(1)
                      for path in (ROOT / "benchmarks" / "results").glob("*.md"))
    assert in_makefile == recorded


def test_each_recorded_out_option_writes_the_file_that_records_it():
    """A results file whose command has --out names itself: rerunning the command rewrites that file (a prefix gets
    ".md" appended, dots and all; a path ending in .md is the file)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _report import output_path

    for path in (ROOT / "benchmarks" / "results").glob("*.md"):
        command = re.search(r"^- command: `(.*)`$", path.read_text(), re.M).group(1).split()
        if "--out" in command:
            written = ROOT / output_path(command[command.index("--out") + 1], ".md")
            assert written == path, f"{path.name}'s command writes {written.name}"


def test_output_path_keeps_dots_in_a_prefix():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _report import output_path

    assert output_path("results/deblur-gray-7.65", ".md") == Path("results/deblur-gray-7.65.md")
    assert output_path("results/deblur", ".png") == Path("results/deblur.png")
    assert output_path("results/denoise.md", ".md") == Path("results/denoise.md")
    assert output_path("results/denoise.md", ".png") == Path("results/denoise.png")


def test_results_header_names_the_state_at_the_start_not_at_the_end(monkeypatch):
    """A header written after hours of work must name the commit, date and load of the start (tune.py once stamped
    the commit and uncommitted files of the moment it finished): header() asks git and the clock nothing itself."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _report

    def no_git(*args, **kwargs):
        raise AssertionError("header() ran git: it must use the snapshot taken at import")

    monkeypatch.setattr(_report.subprocess, "run", no_git)
    lines = _report.header("title", command="cmd")
    assert f"- commit: {_report.STARTED_COMMIT}" in lines
    assert f"- date: {_report.STARTED_AT:%Y-%m-%d %H:%M} UTC" in lines
    sources = {path.name: path.read_text() for path in (ROOT / "benchmarks").glob("*.py") if path.name != "_report.py"}
    assert not [name for name, text in sources.items() if "git_commit()" in text or "datetime.now(" in text]


def test_no_function_assigns_the_name_of_a_function_or_class_of_its_module():
    """A local assignment to a module-level function's name makes every use of that name in the function local, so a
    call before the assignment fails at run time (UnboundLocalError) — only at the end of a long benchmark, as
    time_to_solution.py did with `report`. Checked statically over the project's own Python files."""
    import ast

    shadowing = []
    for path in sorted(ROOT.glob("**/*.py")):
        if not {".venv", ".git", "build"}.isdisjoint(path.relative_to(ROOT).parts):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        module_level = {node.name for node in tree.body
                        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                shadowing += [f"{path.relative_to(ROOT)}:{node.lineno} {function.name}() assigns {node.id}"
                              for node in ast.walk(function)
                              if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id in module_level]
    assert not shadowing, shadowing
