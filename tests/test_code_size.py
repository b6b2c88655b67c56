"""Small files and short functions in refusal/: a file over MAX_FILE_LINES or a function over MAX_FUNCTION_LINES
fails, named with its size, so a newcomer can read any unit on one screen or two."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "refusal"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def oversized(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(root.parent)
        if source.count("\n") > MAX_FILE_LINES:
            found.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_files_and_functions_are_small():
    assert oversized() == []


def test_the_check_finds_a_long_function_and_a_long_file(tmp_path):
    pkg = tmp_path / "refusal"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (pkg / "long_function.py").write_text(f"def f():\n{body}\n")
    (pkg / "long_file.py").write_text("x = 1\n" * (MAX_FILE_LINES + 1))
    (pkg / "fine.py").write_text("def g():\n    return 1\n")
    found = oversized(pkg)
    assert found == [f"refusal/long_file.py: {MAX_FILE_LINES + 1} lines",
                     f"refusal/long_function.py:1 f: {MAX_FUNCTION_LINES + 1} lines"]
