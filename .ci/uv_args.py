"""Print, one per line, the uv arguments that give it the package settings pip has on this machine.

pip reads pip.conf and PIP_* variables (here: local package indexes, a wheel folder and a constraints file);
uv reads neither. With these arguments both installers choose among the same files under the same caps.
"""
import ast
import subprocess
import sys

FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraints"}

# `pip config list` lists the PIP_* variables first, then the files: the first index-url is the one pip uses.
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         check=True).stdout
seen = set()
for line in listing.splitlines():          # e.g.  global.extra-index-url='file:///a file:///b'
    key, _, value = line.partition("=")
    flag = FLAGS.get(key.rpartition(".")[2])
    if flag is None:
        continue
    for item in ast.literal_eval(value).split():
        if (flag, item) not in seen and not (flag == "--index-url" and any(f == flag for f, _ in seen)):
            seen.add((flag, item))
            print(flag, item, sep="\n")
# pip takes the best version from all indexes; uv's default stops at the first index that has the package.
print("--index-strategy", "unsafe-best-match", sep="\n")
