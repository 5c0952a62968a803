"""The README and the study pages as a reader meets them: commands that run at today's code, links that resolve."""

import ast
import glob
import os
import re
import shlex

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(REPO, "README.md"), os.path.join(REPO, "BUILD.md"), os.path.join(REPO, "docs", "README.md")] + \
    sorted(glob.glob(os.path.join(REPO, "docs", "experiments", "*.md")))
ABSL_FLAGS = {"help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok", "logtostderr", "alsologtostderr",
              "verbosity", "v", "log_dir", "stderrthreshold", "showprefixforinfo", "only_check_args", "pdb",
              "pdb_post_mortem", "run_with_pdb", "run_with_profiling", "profile_file", "use_cprofile_for_profiling"}
# Modules a command may run that are not the project's (their flags are not checked).
EXTERNAL = {"pytest", "venv", "pip", "tensorboard", "scalesim", "scalesim.scale"}


def _rel(path):
    return os.path.relpath(path, REPO)


def code_lines(text):
    """The shell lines of a page: fenced blocks (not python) and indented blocks, continuations joined."""
    lines, out, fence = text.splitlines(), [], None
    for line in lines:
        if line.strip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:].strip()
            continue
        if (fence is not None and fence not in ("python", "py")) or (fence is None and line.startswith("    ")):
            out.append(line.strip())
    joined, buffer = [], ""
    for line in out:
        buffer = f"{buffer} {line}" if buffer else line
        if buffer.endswith("\\"):
            buffer = buffer[:-1].rstrip()
            continue
        joined.append(buffer)
        buffer = ""
    return joined + ([buffer] if buffer else [])


def commands(text):
    """`(module, [flag names])` of every `python -m MODULE ...` in a page's shell lines."""
    found = []
    for line in code_lines(text):
        line = line.split(" #")[0]
        for part in re.split(r"&&|;|\|", line):
            try:
                words = shlex.split(part)
            except ValueError:
                words = part.split()
            for i, word in enumerate(words[:-2]):
                if re.fullmatch(r"python3?", word) and words[i + 1] == "-m":
                    args = words[i + 3:]
                    if "--" in args:  # tools.trials passes what follows `--` to the trainer
                        cut = args.index("--")
                        found.append(("trainers.cifar", [a for a in args[cut + 1:] if a.startswith("--")]))
                        args = args[:cut]
                    found.append((words[i + 2], [a for a in args if a.startswith("--")]))
    return found


def _module_path(module):
    path = os.path.join(REPO, *module.split(".")) + ".py"
    return path if os.path.exists(path) else None


def _defined_flags(path, seen=None):
    """Flag names `flags.DEFINE_*` (or argparse's `add_argument`) defines in `path` and in the project modules it imports (booleans marked)."""
    seen = set() if seen is None else seen
    if path in seen:
        return {}, set()
    seen.add(path)
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names, booleans = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "").startswith("DEFINE"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names[node.args[0].value] = node.func.attr
                if node.func.attr == "DEFINE_boolean" or node.func.attr == "DEFINE_bool":
                    booleans.add(node.args[0].value)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":  # the argparse tools
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--"):
                    names[arg.value[2:]] = "add_argument"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("trainers", "tools"):
            for alias in node.names:
                for candidate in (f"{node.module}.{alias.name}", node.module):
                    sub = _module_path(candidate)
                    if sub:
                        more, more_bool = _defined_flags(sub, seen)
                        names.update(more)
                        booleans |= more_bool
                        break
    return names, booleans


def _all_commands():
    out = []
    for page in PAGES:
        with open(page) as f:
            for module, flags in commands(f.read()):
                out.append((_rel(page), module, flags))
    return out


def test_the_command_parser_reads_continued_and_chained_lines():
    text = ("Run:\n\n    python3 -m venv .venv && . .venv/bin/activate && python -m tools.reproduce --preset=cpu \\\n"
            "        --out=runs/r --noverbose   # a comment --not_a_flag\n\n```python\npython -m not.shell\n```\n")
    assert commands(text) == [("venv", []), ("tools.reproduce", ["--preset=cpu", "--out=runs/r", "--noverbose"])]


def test_every_command_in_the_readme_and_the_study_pages_names_a_module_and_flags_of_todays_code():
    problems = []
    cache = {}
    for page, module, flags in _all_commands():
        if module in EXTERNAL:
            continue
        path = _module_path(module)
        if path is None:
            problems.append(f"{page}: python -m {module}: no such module")
            continue
        if module not in cache:
            cache[module] = _defined_flags(path)
        names, booleans = cache[module]
        for flag in flags:
            name = flag[2:].split("=", 1)[0]
            if name in names or name in ABSL_FLAGS or (name.startswith("no") and name[2:] in booleans):
                continue
            problems.append(f"{page}: python -m {module}: {flag} is not a flag of {module}")
    assert not problems, "\n".join(problems)


def test_the_readme_is_one_screen_and_build_md_a_contributors_page():
    with open(os.path.join(REPO, "README.md")) as f:
        assert len(f.read().splitlines()) <= 160
    with open(os.path.join(REPO, "BUILD.md")) as f:
        assert len(f.read().splitlines()) <= 300


@pytest.mark.parametrize("page", [_rel(p) for p in PAGES + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
                                  + [os.path.join(REPO, "models", "README.md")]])
def test_every_link_and_image_of_a_page_resolves(page):
    with open(os.path.join(REPO, page)) as f:
        text = f.read()
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        name, _, anchor = target.partition("#")
        path = os.path.normpath(os.path.join(REPO, os.path.dirname(page), name)) if name else os.path.join(REPO, page)
        if not os.path.exists(path):
            missing.append(target)
        elif anchor and path.endswith(".md") and anchor not in _anchors(path):
            missing.append(f"{target} (no such heading)")
    assert not missing, f"{page}: {missing}"


def _anchors(path):
    """The GitHub anchors of a Markdown file's headings (lowercased, punctuation dropped, spaces to '-')."""
    with open(path) as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M)}


def test_anchors_follow_githubs_rule():
    assert _anchors(os.path.join(REPO, "docs", "experiments", "cpu-preset.md")) >= {
        "the-machines-speed-one-resnet-38-epoch-alone"}


def test_every_study_is_in_the_index():
    with open(os.path.join(REPO, "docs", "README.md")) as f:
        index = f.read()
    for page in glob.glob(os.path.join(REPO, "docs", "experiments", "*.md")):
        assert f"experiments/{os.path.basename(page)}" in index, page
