"""Rebuild corpora/kjv.txt, the bundled default corpus, from Debian's packages.

The King James Version (1611) is in the public domain; Debian ships it as the
`bible-kjv-text` data package, read with the `bible` program of `bible-kjv`:

    apt-get install -y bible-kjv
    python scripts/build_default_corpus.py

The program prints chapters with headings ("Genesis 1") and verses wrapped at
80 columns ("  1 In the beginning ..."); this script keeps the headings and
puts each verse on one line ("1 In the beginning ..."), so the model sees one
regular layout.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parent.parent / "corpora" / "kjv.txt"
VERSE = re.compile(r"^\s+(\d+) (.*)$")


def reflow(raw: str) -> str:
    out: list[str] = []
    for line in raw.splitlines():
        verse = VERSE.match(line)
        if verse:
            out.append(f"{verse.group(1)} {verse.group(2).strip()}")
        elif not line.strip():
            if out and out[-1] != "":
                out.append("")
        elif out and out[-1] and out[-1][0].isdigit():
            out[-1] += " " + line.strip()  # continuation of a wrapped verse
        else:
            out.append(line.strip())  # a chapter heading
    return "\n".join(out).strip() + "\n"


def main() -> None:
    if shutil.which("bible") is None:
        sys.exit("needs the `bible` program: apt-get install -y bible-kjv")
    raw = subprocess.run(
        ["bible", "gen1:1-rev22:21"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "80"},
    ).stdout
    TARGET.write_text(reflow(raw), encoding="utf-8")
    print(f"wrote {TARGET} ({TARGET.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
