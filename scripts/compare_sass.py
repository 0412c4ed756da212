#!/usr/bin/env python3
"""Compares the SASS of every kernel in two CUDA builds: a refactor that should not change the generated code
must leave each function's instruction sequence identical, per architecture.

Usage: scripts/compare_sass.py BUILD_A BUILD_B [--cuobjdump PATH] [--show N] [--rename]

Both builds must use the same flags (archs, head dims, dtypes). Every object compiled from a .cu file (*.cu.o under
the build folder) is disassembled with `cuobjdump -sass`; addresses and encodings are dropped, function names,
instruction text (operands, branch offsets within the function, predicates) are kept. The hash nvcc puts in the names
of anonymous namespaces (_GLOBAL__N__<hash>_<file>_...) depends on where the source tree lies, so it is masked: two
checkouts in different folders compare equal. Objects are paired by their path relative to the build folder,
functions by (arch, name). Exit status 0 when everything matches.
--by-function pools the functions of all objects of each build instead, so that kernels moved between files (a split
into one instantiation per file) still pair: names in anonymous namespaces then drop the file they came from too.
--rename also reports, for each function that differs, whether it is the same instruction sequence under one
consistent one-to-one renaming of its registers (R, UR, P, UP): the same operations on the same data flow, with
other physical registers (such functions still count as differing).
cuobjdump: --cuobjdump, else $CUOBJDUMP, else on PATH, else $CUDA_HOME/bin (some toolkits ship without it; the
nvidia-cuda-cuobjdump wheel on PyPI has it).
"""

import argparse
import collections
import os
import pathlib
import re
import shutil
import subprocess
import sys

INSTR = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s*(.*?)\s*;")
ANON_NS = re.compile(r"_GLOBAL__N__[0-9a-f]{8}_")


# An anonymous namespace's mangled name with the file it is in, <length>_GLOBAL__N__<hash>_<length>_<file>_cu_<hash>
# (then _<number> in some files), and the length of the name that follows it.
ANON_FILE = re.compile(r"\d+_GLOBAL__N__(?:#|[0-9a-f]{8})_\d+_[A-Za-z0-9_]+?_cu_[0-9a-f]{8}_?\d+(?=[A-Za-z_])")


def unhash(text):
    return ANON_NS.sub("_GLOBAL__N__#_", text)


def unfile(text):
    return ANON_FILE.sub("_GLOBAL__N__#anon", text)


REG = re.compile(r"\b(U?[RP]\d+)\b")


def same_up_to_renaming(a, b):
    """Whether instruction lists a and b are equal under one bijection of register names."""
    if len(a) != len(b):
        return False
    fwd, back = {}, {}
    for x, y in zip(a, b):
        if REG.sub("%", x) != REG.sub("%", y):
            return False
        for ra, rb in zip(REG.findall(x), REG.findall(y)):
            if fwd.setdefault(ra, rb) != rb or back.setdefault(rb, ra) != ra:
                return False
    return True


def find_cuobjdump(explicit):
    for cand in (explicit, os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump")):
        if cand:
            return cand
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cand = os.path.join(cuda, "bin", "cuobjdump")
    if os.path.exists(cand):
        return cand
    sys.exit("compare_sass: cuobjdump not found (pass --cuobjdump or set CUOBJDUMP)")


def disassemble(tool, obj):
    """{(arch, function): [instruction, ...]} of one object file."""
    out = subprocess.run([tool, "-sass", str(obj)], check=True, capture_output=True, text=True).stdout
    funcs = {}
    arch, name = None, None
    for line in out.splitlines():
        s = line.strip()
        if s.startswith("code for sm_"):
            arch, name = s.split()[-1], None
        elif s.startswith("Function :"):
            name = unhash(s.split(":", 1)[1].strip())
            key = (arch, name)
            if key in funcs:
                sys.exit(f"compare_sass: {obj}: {arch} {name} listed twice")
            funcs[key] = []
        elif name is not None:
            m = INSTR.match(line)
            if m:
                funcs[(arch, name)].append(unhash(m.group(1)))
    return funcs


def pooled(tool, objs):
    """disassemble() of one object, or of a list of objects merged with file names dropped from anonymous
    namespaces (--by-function)."""
    if not isinstance(objs, list):
        return disassemble(tool, objs)
    funcs = {}
    for obj in objs:
        for (arch, name), instrs in disassemble(tool, obj).items():
            key = (arch, unfile(name))
            if key in funcs:
                sys.exit(f"compare_sass: {arch} {key[1]} is defined in two objects ({obj} and another)")
            funcs[key] = [unfile(i) for i in instrs]
    return funcs


def objects(build):
    root = pathlib.Path(build)
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*.cu.o"))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build_a")
    ap.add_argument("build_b")
    ap.add_argument("--cuobjdump")
    ap.add_argument("--show", type=int, default=3, help="differing functions to print in full context")
    ap.add_argument("--rename", action="store_true", help="test differing functions for a register renaming")
    ap.add_argument("--by-function", action="store_true", help="pair functions across all objects of a build")
    args = ap.parse_args()
    tool = find_cuobjdump(args.cuobjdump)
    objs_a, objs_b = objects(args.build_a), objects(args.build_b)
    if args.by_function:
        objs_a, objs_b = {"(all objects)": list(objs_a.values())}, {"(all objects)": list(objs_b.values())}
    ok = True
    if set(objs_a) != set(objs_b):
        ok = False
        for rel in sorted(set(objs_a) ^ set(objs_b)):
            print(f"only in {'A' if rel in objs_a else 'B'}: {rel}")
    per_arch = collections.Counter()
    same_arch = collections.Counter()
    shown = 0
    for rel in sorted(set(objs_a) & set(objs_b)):
        fa, fb = pooled(tool, objs_a[rel]), pooled(tool, objs_b[rel])
        for key in sorted(set(fa) | set(fb), key=lambda k: (k[0] or "", k[1])):
            arch, name = key
            if key not in fa or key not in fb:
                ok = False
                print(f"{rel}: {arch} {name}: only in {'A' if key in fa else 'B'}")
                continue
            per_arch[arch] += 1
            a, b = fa[key], fb[key]
            if a == b:
                same_arch[arch] += 1
                continue
            ok = False
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            note = ""
            if args.rename:
                note = ", register renaming only" if same_up_to_renaming(a, b) else ", not a renaming"
            print(f"{rel}: {arch} {name}: DIFFERS ({len(a)} vs {len(b)} instructions, first at {first}{note})")
            if shown < args.show:
                shown += 1
                for i in range(max(0, first - 3), min(max(len(a), len(b)), first + 8)):
                    x = a[i] if i < len(a) else ""
                    y = b[i] if i < len(b) else ""
                    print(f"  {'=' if x == y else '!'} {i:6d}  {x:<60} | {y}")
    for arch in sorted(per_arch):
        print(f"{arch}: {same_arch[arch]} of {per_arch[arch]} functions identical")
    print("SASS identical" if ok else "SASS DIFFERS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
