"""Assemble REPRODUCTION.md from the experiments' results and verdicts.

    python scripts/reproduction_report.py [--runs runs/reproduce] [--out REPRODUCTION.md]

For every experiment in ``experiments/`` with results under ``RUNS/NAME/`` (what
``byzsgd reproduce NAME`` wrote): the paper's claim and our setting (from the TOML's
``[reproduce]`` table), the command, the table of our numbers (recomputed from the runs), the
figure (copied to ``docs/reproduction/NAME.png``), the wall clock (``reproduce.json``) and the
time spent in training rounds (the runs' ``summary.json``), and the verdict, written by a person
in the TOML's ``[reproduce.verdict]`` table (``label``, ``text``) after reading the numbers.
The page starts with ``docs/reproduction/header.md`` and ends with ``footer.md``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from byzsgd.reproduce import available, load, markdown_table, points, summarize
from byzsgd.results import read_json

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "reproduction"
#: Section order: paper prefix of the experiment names, and the paper's heading.
PAPERS = [("foe", "Fall of Empires (Xie, Koyejo, Gupta, UAI 2019)"),
          ("gen", "Generalized Byzantine-tolerant SGD (Xie, Koyejo, Gupta, 2018)"),
          ("alie", "A Little Is Enough (Baruch, Baruch, Goldberg, NeurIPS 2019)"),
          ("hv", "The Hidden Vulnerability of Distributed Learning in Byzantium "
                 "(El Mhamdi, Guerraoui, Rouault, ICML 2018)")]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def section(name: str, runs: Path) -> tuple[str, dict[str, str]] | None:
    """The Markdown section of experiment ``name`` and its summary-table row, or None when
    it has no complete result under ``runs``."""
    exp = load(name)
    out = runs / name
    if not (out / "reproduce.json").exists():
        return None
    meta = read_json(out / "reproduce.json")
    pts = points(exp)
    missing = [p.name for p in pts if not (out / p.name / "summary.json").exists()]
    if missing:
        print(f"{name}: skipped, {len(missing)} of {len(pts)} runs missing under {out}")
        return None
    table = summarize(pts, out, exp.columns)
    train = sum(float(read_json(out / p.name / "summary.json").get("train_seconds") or 0.0)
                for p in pts)
    seeds = sorted({p.config.seed for p in pts})
    verdict = exp.info.get("verdict", {})
    label = str(verdict.get("label", "not assessed"))
    info = exp.info
    text = [f"### {exp.title}", ""]
    if info.get("paper_ref"):
        text += [f"*{info['paper_ref']}*", ""]
    text += [f"**Paper's claim.** {str(info.get('claim', '')).strip()}", "",
             f"**Setting here.** {str(info.get('setting', '')).strip()}", "",
             f"**Command.** `byzsgd reproduce {name}` (config: "
             f"[`experiments/{name}.toml`](experiments/{name}.toml))", "",
             f"**Our numbers** ({len(pts)} runs, seed{'s' if len(seeds) > 1 else ''} "
             f"{', '.join(map(str, seeds))}; mean ± std over seeds where more than one):", "",
             markdown_table(exp, table), ""]
    figure = out / "figure.png"
    if figure.exists():
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, DOCS / f"{name}.png")
        text += [f"![{name}](docs/reproduction/{name}.png)", ""]
    wall = float(meta.get("wall_seconds_total", 0.0))
    text += [f"**Wall clock.** {_minutes(wall)} (`--jobs 2`: two "
             f"single-threaded runs at a time on the 2 cores), of which {_minutes(train)} of "
             f"training rounds summed over runs (evaluation excluded).", "",
             f"**Verdict: {label}.**  {str(verdict.get('text', '')).strip()}", ""]
    row = {"name": name, "title": exp.title.split(":")[0], "label": label,
           "wall": _minutes(wall), "seconds": str(wall)}
    return "\n".join(text), row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(ROOT / "runs" / "reproduce"))
    parser.add_argument("--out", default=str(ROOT / "REPRODUCTION.md"))
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    names = available()
    body: list[str] = []
    rows: list[dict[str, str]] = []
    for prefix, heading in PAPERS:
        parts = [s for n in names if n.startswith(prefix + "-")
                 if (s := section(n, runs)) is not None]
        if not parts:
            continue
        body += [f"## {heading}", ""]
        for text, row in parts:
            body += [text, ""]
            rows.append(row)
    summary = ["## Summary", "", "| experiment | paper's figure / table | verdict | wall clock |",
               "|---|---|---|---|"]
    summary += [f"| [`{r['name']}`](experiments/{r['name']}.toml) | {r['title']} | "
                f"{r['label']} | {r['wall']} |" for r in rows]
    total = sum(float(r["seconds"]) for r in rows)
    summary += ["", f"Total wall clock of the experiments above: {_minutes(total)} elapsed "
                f"(the sum of their `byzsgd reproduce NAME --jobs 2` wall clocks on the "
                f"2-core machine).", ""]
    header = (DOCS / "header.md").read_text().rstrip() + "\n\n"
    footer = (DOCS / "footer.md").read_text().rstrip() + "\n"
    Path(args.out).write_text(header + "\n".join(summary) + "\n\n" + "\n".join(body) + footer)
    print(f"wrote {args.out}: {len(rows)} experiments")


if __name__ == "__main__":
    main()
