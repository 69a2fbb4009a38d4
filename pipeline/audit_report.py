"""The audit's files: ``audit.csv``, ``exclude.txt``, thumbnails and a self-contained ``index.html``.

The page needs no server, no network and no script: inline CSS, an SVG confusion
matrix, and JPEG thumbnails in ``thumbs/`` beside it. Each section shows its top
``top`` items; the CSV holds every image.
"""

from __future__ import annotations

import csv
import html
import os

from pipeline.filenames import AUDIT_CSV, AUDIT_EXCLUDE, AUDIT_PAGE, AUDIT_THUMBS
from pipeline.thumbnails import THUMB_SIDE, write_thumbnail

BASE_COLUMNS = ["path", "split", "label", "predicted"]
SCORE_COLUMNS = ["loss", "self_confidence", "neighbour_agreement", "label_issue_score", "label_issue", "suggested_label",
                 "outlier_score", "outlier_percentile", "kth_neighbour_distance", "outlier", "duplicate_group", "leak",
                 "unreadable", "reason", "excluded", "thumbnail", "thumbnail_error"]

SECTIONS = [("summary", "Summary"), ("confusion", "Confusion matrix"), ("per-class", "Per-class precision and recall"),
            ("top-losses", "Top losses on held-out images"), ("label-issues", "Suspected label errors"),
            ("duplicates", "Duplicates and leaks"), ("outliers", "Outliers"), ("unreadable", "Unreadable files")]

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{width:170px;border:1px solid #ddd;border-radius:4px;padding:5px;font-size:12px}
.card img{display:block;max-width:160px;max-height:160px;margin:0 auto}
.missing{width:160px;height:100px;background:#fee;color:#900;display:flex;align-items:center;justify-content:center;text-align:center;font-size:11px}
.path{word-break:break-all;color:#555}.bad{color:#b00;font-weight:bold}.ok{color:#070}
.bar{background:#eee;height:6px;margin:1px 0}.bar div{background:#47a;height:6px}
.group{border:1px solid #ccc;border-radius:4px;padding:6px;margin:8px 0}.leak{border-color:#b00;background:#fff7f7}
.note{color:#666}
"""


def _write_csv(path: str, rows: list[dict], classes: list[str]) -> None:
    columns = BASE_COLUMNS + [f"prob_{c}" for c in classes] + SCORE_COLUMNS
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


def _write_exclude(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# paths flagged by run_head.py audit (relative to the dataset root); pass with --exclude\n")
        for row in rows:
            if row["excluded"]:
                fh.write(row["path"] + "\n")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _card(row: dict, classes: list[str], lines: list[str], probs: bool = False) -> str:
    if row.get("thumbnail"):
        image = f'<img src="{_e(row["thumbnail"])}" alt="{_e(row["path"])}" loading="eager">'
    else:
        image = f'<div class="missing">thumbnail missing: {_e(row.get("thumbnail_error") or "not made")}</div>'
    body = "".join(f"<div>{line}</div>" for line in lines)
    if probs:
        body += "".join(f'<div>{_e(c)} {row[f"prob_{c}"]:.3f}<div class="bar"><div style="width:{100 * row[f"prob_{c}"]:.1f}%">'
                        "</div></div></div>" for c in classes)
    return f'<div class="card">{image}{body}<div class="path">{_e(row["path"])}</div></div>'


def _shown(title_id: str, shown: int, total: int) -> str:
    more = f" (showing the top {shown}; all {total} are in audit.csv)" if total > shown else ""
    return f'<p class="note" id="{title_id}-count">{total} found{more}.</p>'


def _confusion_svg(matrix: list[list[int]], classes: list[str]) -> str:
    n = len(classes)
    longest = max(len(c[:16]) for c in classes)
    cell, left, top = 44, 20 + 7 * longest, 16 + 5 * longest
    width, height = left + cell * n + 10, top + cell * n + 10
    parts = [f'<svg width="{width}" height="{height}" role="img">']
    for j, c in enumerate(classes):
        x = left + cell * j + cell / 2
        parts.append(f'<text x="{x}" y="{top - 6}" font-size="11" transform="rotate(-45 {x} {top - 6})">{_e(c[:16])}</text>')
    for i, c in enumerate(classes):
        parts.append(f'<text x="{left - 6}" y="{top + cell * i + cell / 2 + 4}" font-size="11" text-anchor="end">{_e(c[:16])}</text>')
        total = max(sum(matrix[i]), 1)
        for j in range(n):
            v = matrix[i][j]
            shade = v / total
            colour = f"rgba(40,90,170,{0.08 + 0.92 * shade:.3f})" if i == j else f"rgba(190,40,40,{0.08 + 0.92 * shade:.3f})"
            parts.append(f'<rect x="{left + cell * j}" y="{top + cell * i}" width="{cell}" height="{cell}" fill="{colour}" stroke="#fff"/>')
            parts.append(f'<text x="{left + cell * j + cell / 2}" y="{top + cell * i + cell / 2 + 4}" font-size="12" '
                         f'text-anchor="middle" fill="{"#fff" if shade > 0.5 else "#222"}">{v}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _thumbnails(out_dir: str, rows: list[dict], wanted: list[int], data_root: str) -> None:
    for index in sorted(set(wanted)):
        row = rows[index]
        if "thumbnail" in row or row["unreadable"]:
            continue
        relative = f"{AUDIT_THUMBS}/{index:06d}.jpg"
        error = write_thumbnail(os.path.join(data_root, row["path"]), os.path.join(out_dir, relative), THUMB_SIDE)
        row["thumbnail"], row["thumbnail_error"] = ("", error) if error else (relative, "")


def write_outputs(out_dir: str, rows: list[dict], summary: dict, classes: list[str], data_root: str, top: int) -> None:
    """Write ``audit.csv``, ``exclude.txt``, the thumbnails of shown images, and ``index.html``.

    Rows gain ``thumbnail`` (a path relative to ``out_dir``) and ``thumbnail_error``
    (why a thumbnail could not be made) for the images the page shows.
    """
    readable = [i for i, r in enumerate(rows) if not r["unreadable"]]
    train = summary["train_split"]
    losses = sorted((i for i in readable if rows[i]["split"] != train and rows[i]["predicted"] != rows[i]["label"]),
                    key=lambda i: -rows[i]["loss"])
    issues = sorted((i for i in readable if rows[i]["label_issue"]), key=lambda i: -rows[i]["label_issue_score"])
    outliers = sorted(readable, key=lambda i: -rows[i]["outlier_score"])
    flagged_outliers = [i for i in outliers if rows[i]["outlier"]]
    groups: dict[str, list[int]] = {}
    for i in readable:
        if rows[i]["duplicate_group"]:
            groups.setdefault(rows[i]["duplicate_group"], []).append(i)
    ordered_groups = sorted(groups.items(), key=lambda kv: (not rows[kv[1][0]]["leak"], kv[0]))
    unreadable = [i for i, r in enumerate(rows) if r["unreadable"]]

    shown_outliers = outliers[:top]
    shown_groups = ordered_groups[:top]
    wanted = losses[:top] + issues[:top] + shown_outliers + [i for _, members in shown_groups for i in members]
    _thumbnails(out_dir, rows, wanted, data_root)
    _write_csv(os.path.join(out_dir, AUDIT_CSV), rows, classes)
    _write_exclude(os.path.join(out_dir, AUDIT_EXCLUDE), rows)

    html_parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                  '<meta name="viewport" content="width=device-width, initial-scale=1">',
                  f"<title>Data audit: {_e(os.path.basename(summary['features']))}</title><style>{CSS}</style></head><body>",
                  f"<h1>Data audit of {_e(os.path.basename(summary['features']))}</h1>",
                  "<nav>" + "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS) + "</nav>"]
    html_parts += _summary_section(summary)
    html_parts += _confusion_section(summary, classes)
    html_parts += _per_class_section(summary)
    html_parts.append('<section id="top-losses"><h2>Top losses on held-out images</h2>')
    html_parts.append(_shown("top-losses", min(top, len(losses)), len(losses)))
    html_parts.append('<div class="cards">' + "".join(
        _card(rows[i], classes, [f'given <b>{_e(rows[i]["label"])}</b>, predicted <span class="bad">{_e(rows[i]["predicted"])}</span>',
                                 f'loss {rows[i]["loss"]:.3f}'], probs=True) for i in losses[:top]) + "</div></section>")
    html_parts.append('<section id="label-issues"><h2>Suspected label errors</h2>')
    html_parts.append(_shown("label-issues", min(top, len(issues)), len(issues)))
    html_parts.append('<div class="cards">' + "".join(
        _card(rows[i], classes, [f'given <span class="bad">{_e(rows[i]["label"])}</span> &rarr; suggested '
                                 f'<span class="ok">{_e(rows[i]["suggested_label"])}</span>',
                                 f'self-confidence {rows[i]["self_confidence"]:.3f}, neighbours agreeing '
                                 f'{rows[i]["neighbour_agreement"]:.2f}'], probs=True) for i in issues[:top]) + "</div></section>")
    html_parts += _duplicates_section(rows, classes, shown_groups, len(ordered_groups))
    html_parts.append('<section id="outliers"><h2>Outliers</h2>')
    html_parts.append(f'<p class="note" id="outliers-count">{len(flagged_outliers)} flagged ({_e(summary["rules"]["outlier"])}); '
                      f"the {len(shown_outliers)} highest scores are shown, all are in audit.csv.</p>")
    html_parts.append('<div class="cards">' + "".join(
        _card(rows[i], classes, [f'{"<span class=bad>outlier</span> " if rows[i]["outlier"] else ""}score '
                                 f'{rows[i]["outlier_score"]:.1f} (train percentile {rows[i]["outlier_percentile"]:.3f})',
                                 f'label {_e(rows[i]["label"])}']) for i in shown_outliers) + "</div></section>")
    html_parts.append('<section id="unreadable"><h2>Unreadable files</h2>')
    html_parts.append(_shown("unreadable", min(top, len(unreadable)), len(unreadable)))
    if unreadable:
        html_parts.append('<table><tr><th class="l">split</th><th class="l">path</th><th class="l">reason</th></tr>' + "".join(
            f'<tr><td class="l">{_e(rows[i]["split"])}</td><td class="l">{_e(rows[i]["path"])}</td>'
            f'<td class="l">{_e(rows[i]["reason"])}</td></tr>' for i in unreadable[:top]) + "</table>")
    html_parts.append("</section></body></html>")
    with open(os.path.join(out_dir, AUDIT_PAGE), "w", encoding="utf-8") as fh:
        fh.write("\n".join(html_parts) + "\n")


def _summary_section(summary: dict) -> list[str]:
    m = summary["model"]
    cv = f", {m['cv_folds']}-fold CV accuracy {m['cv_score']:.4f}" if m.get("cv_score") is not None else ""
    counts = [("images", summary["images"]), ("unreadable files", summary["unreadable"]),
              ("suspected label errors", summary["label_issues"]), ("duplicate groups", summary["duplicate_groups"]),
              ("of which leak across splits", summary["leak_groups"]), ("outliers", summary["outliers"]),
              ("paths in exclude.txt", summary["excluded"])]
    out = ['<section id="summary"><h2>Summary</h2>',
           f'<p>Features <code>{_e(summary["features"])}</code>; head {_e(m["clf"])}, C={m["C"]:.3g} '
           f'({_e(m["C_selection"])}{cv}){"; from " + _e(m["head"]) if m.get("head") else ""}.</p>',
           "<table>" + "".join(f'<tr><th class="l">{_e(k)}</th><td>{v}</td></tr>' for k, v in counts) + "</table>",
           '<table><tr><th class="l">split</th><th class="l">probabilities</th><th>images</th><th>accuracy</th>'
           "<th>balanced accuracy</th><th>label issues</th></tr>"]
    for name, r in summary["splits"].items():
        out.append(f'<tr><td class="l">{_e(name)}</td><td class="l">{_e(r["probabilities"])}</td><td>{r["n"]}</td>'
                   f'<td>{r["accuracy"]:.4f}</td><td>{r["balanced_accuracy"]:.4f}</td><td>{r["label_issues"]}</td></tr>')
    out.append("</table><ul>" + "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in summary["rules"].items()) + "</ul></section>")
    return out


def _confusion_section(summary: dict, classes: list[str]) -> list[str]:
    out = ['<section id="confusion"><h2>Confusion matrix</h2><p class="note">Rows: given label; columns: predicted. '
           'Training images are counted with their out-of-fold prediction.</p><div class="cards">']
    for name, r in summary["splits"].items():
        out.append(f'<div><h3>{_e(name)} ({_e(r["probabilities"])})</h3>{_confusion_svg(r["confusion_matrix"], classes)}</div>')
    out.append("</div></section>")
    return out


def _per_class_section(summary: dict) -> list[str]:
    out = ['<section id="per-class"><h2>Per-class precision and recall</h2>']
    for name, r in summary["splits"].items():
        out.append(f'<h3>{_e(name)}</h3><table><tr><th class="l">class</th><th>precision</th><th>recall</th><th>f1</th>'
                   "<th>support</th></tr>" + "".join(
                       f'<tr><td class="l">{_e(c)}</td><td>{m["precision"]:.3f}</td><td>{m["recall"]:.3f}</td>'
                       f'<td>{m["f1"]:.3f}</td><td>{m["support"]}</td></tr>' for c, m in r["per_class"].items()) + "</table>")
    out.append("</section>")
    return out


def _duplicates_section(rows: list[dict], classes: list[str], shown: list[tuple[str, list[int]]], total: int) -> list[str]:
    out = ['<section id="duplicates"><h2>Duplicates and leaks</h2>', _shown("duplicates", len(shown), total)]
    for gid, members in shown:
        leak = rows[members[0]]["leak"]
        title = f'{_e(gid)}: {len(members)} images{" &mdash; <span class=bad>leak across splits</span>" if leak else ""}'
        cards = "".join(_card(rows[i], classes, [f'{_e(rows[i]["split"])}, label {_e(rows[i]["label"])}'
                                                 f'{" (kept)" if not rows[i]["excluded"] else " (in exclude.txt)"}'])
                        for i in members)
        out.append(f'<div class="group{" leak" if leak else ""}"><div>{title}</div><div class="cards">{cards}</div></div>')
    out.append("</section>")
    return out
