"""Compare fine-tuning runs side by side: a Markdown and an HTML report with figures.

    python train/report.py runs/freeze runs/full -o report/

Reads each run folder's metrics.json (written by train/finetune.py at the end of a run) and
writes report/report.md, report/report.html (figures inline: opens in any browser),
curves.png, per_class.png and confusion.png. Any number of runs, one column each.
"""

from .shell import ArgumentParser, cli
from ..reporting.report import write_report


@cli
def main(argv=None, prog=None):
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders of train/finetune.py (its --out)")
    p.add_argument("-o", "--out", default="report", help="folder for report.md, report.html and the figures")
    args = p.parse_args(argv)
    md = write_report(args.runs, args.out)
    print(f"wrote {md} and {md.with_suffix('.html')} (open it in a browser)")
    return 0

