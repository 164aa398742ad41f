"""`cemiray evaluate`'s HTML page (apps): report.html beside report.json and the figures.

The page `cemiray evaluate` writes as `out/report.html`: the model, every verification set's
accuracy ± std, VAL and TAR at FAR (with the FARs its impostor pairs cannot measure marked), every
score distribution (the .bin sets' pairs and the datasets) with its FMR/FNMR table and figures,
and the units of every score and threshold. It uses the experiment report's style and escaping;
the figures are the PNGs beside it, linked relatively, so the folder can be moved or served as
is."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from cemiray.apps.evaluate_summary import COSINE, SQUARED_L2, UNITS
from cemiray.apps.report import markup as mk
from cemiray.apps.report.markup import fmt, fmt_percent
from cemiray.data import storage


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{mk.text(title)}</h2>{body}</section>'


def _figure(url: str, caption: str) -> str:
    file = url.rstrip("/").rsplit("/", 1)[-1]  # every figure lies beside report.html
    return (f'<figure><img src="{mk.text(quote(file))}" alt="{mk.text(caption)}">'
            f"<figcaption>{mk.text(caption)}</figcaption></figure>")


def _notes(items: list[str]) -> str:
    if not items:
        return ""
    return "<ul>" + "".join(f'<li class="warn">{mk.text(i)}</li>' for i in items) + "</ul>"


def _tar_cell(entry: dict[str, Any]) -> str:
    return fmt_percent(entry["tar"]) if entry.get("measurable") else "not measurable"


def _verification_section(report: dict) -> str:
    rows, notes = [], []
    fars = list(next(iter(report["verification"].values()))["tar_at_far"])
    for name, r in report["verification"].items():
        val = fmt_percent(r["val"], r["val_std"]) + ("" if r["val_measurable"] else " *")
        rows.append([name, fmt(r["num_genuine_pairs"]), fmt(r["num_impostor_pairs"]),
                     fmt_percent(r["accuracy_mean"], r["accuracy_std"]), val,
                     *[_tar_cell(r["tar_at_far"][far]) for far in fars],
                     fmt(r["min_measurable_far"], 3), fmt_percent(r["eer"]),
                     fmt(r["eer_threshold"])])
        unmeasurable = [far for far, t in r["tar_at_far"].items() if not t["measurable"]]
        if unmeasurable:
            notes.append(f"{name}: {r['num_impostor_pairs']} impostor pairs measure FAR down to "
                         f"1/{r['num_impostor_pairs']} = {r['min_measurable_far']:.3g}; TAR at "
                         f"FAR {', '.join(unmeasurable)}: not measurable (null in "
                         "report.json).")
        if not r["val_measurable"]:
            notes.append(f"{name}: * VAL at FAR 1e-3 {r['val_note']}.")
    headers = ["set", "same pairs", "different pairs", "accuracy (mean ± std over folds)",
               "VAL @ FAR=1e-3 (k-fold)", *[f"TAR @ FAR={far}" for far in fars],
               "smallest measurable FAR", "EER", "EER threshold (cosine)"]
    intro = ("<p>arcface_torch's 10-fold protocol: accuracy at the best squared-L2-distance "
             "threshold of the other folds; TAR at FAR, EER and their thresholds on the cosine "
             "similarities of all pairs. A FAR below 1 / (impostor pairs) cannot be measured.</p>")
    return _section("verification", "Verification",
                    intro + mk.table(headers, rows) + _notes(notes))


def _distributions(report: dict) -> list[tuple[str, str, dict[str, Any]]]:
    rows = [(name, ".bin pairs", r["score_distribution"])
            for name, r in report["verification"].items()]
    return rows + [(name, "dataset", r) for name, r in report["datasets"].items()]


def _scores_section(report: dict) -> str:
    distributions = _distributions(report)
    table, rates = [], []
    for name, kind, r in distributions:
        table.append([name, kind, fmt(r["num_images"]), fmt(r["num_identities"]),
                      fmt(r["num_mated"]), fmt(r["num_nonmated"]),
                      f"{fmt(r['mated_mean'], 3)} ± {fmt(r['mated_std'], 3)}",
                      f"{fmt(r['nonmated_mean'], 3)} ± {fmt(r['nonmated_std'], 3)}",
                      fmt(r["d_prime"], 3), fmt_percent(r["eer"]), fmt(r["eer_threshold"])])
        rates += [[name, fmt(t["threshold"], 3), fmt_percent(t["fmr"]), fmt_percent(t["fnmr"])]
                  for t in r["rates"]]
    headers = ["set", "kind", "images", "identities", "mated pairs", "non-mated pairs",
               "mated mean ± std (cosine)", "non-mated mean ± std (cosine)", "d′", "EER",
               "EER threshold (cosine)"]
    note = ("<p>Scores: cosine similarity. A .bin's mated scores are its same pairs, its "
            "non-mated scores its different pairs; a dataset's are every same-identity pair "
            "and (a sample of) the different-identity pairs. A comparison is accepted when its "
            "score is ≥ the threshold.</p>")
    files = report["files"]
    charts = [_figure(files["det"], "DET curves: FNMR against FMR")]
    if len(distributions) > 1:
        charts.insert(0, _figure(files["scores"], "All sets: mated (filled) / non-mated "
                                 "(outlined) scores, cosine similarity"))
    charts += [_figure(files[f"scores_{name}"], f"{name}: mated / non-mated scores "
                       "(cosine similarity)") for name, _, _ in distributions]
    return _section("scores", "Mated / non-mated score distributions",
                    note + mk.table(headers, table)
                    + "<h3>FMR / FNMR at cosine thresholds</h3>"
                    + mk.table(["set", "threshold (cosine)", "FMR", "FNMR"], rates)
                    + "".join(charts))


def _comparisons_section(report: dict) -> str:
    rows = [[c["b"], c["a"], fmt(c["mated"]["wasserstein"]), fmt(c["mated"]["kl_a_b"]),
             fmt(c["nonmated"]["wasserstein"]), fmt(c["nonmated"]["kl_a_b"])]
            for c in report["comparisons"]]
    headers = ["set", "reference", "mated W1 (cosine)", "mated KL (nats)",
               "non-mated W1 (cosine)", "non-mated KL (nats)"]
    return _section("comparisons", "Distances to the reference", mk.table(headers, rows, 2))


def _units_section() -> str:
    rows = [[COSINE, UNITS[COSINE]], [SQUARED_L2, UNITS[SQUARED_L2]], ["rate", UNITS["rate"]]]
    fields = [[field, unit] for field, unit in UNITS["fields"].items()]
    return _section("units", "Units", mk.table(["unit", "meaning"], rows, 2)
                    + "<details><summary>report.json fields and their units</summary>"
                    + mk.table(["field", "unit"], fields, 2) + "</details>")


def _header(report: dict) -> str:
    model = report["model"]
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = (f"model <code>{mk.text(model['uri'])}</code> ({mk.text(model['input_size'])} px, "
            f"{mk.text(model['dim'])}-d, content hash <code>{mk.text(model['content_hash'])}"
            f"</code>) · {mk.text(fmt(report['images']))} images embedded in "
            f"{mk.text(report['seconds']['embed'])} s · created {mk.text(created)}")
    return (f"<header><h1>cemiray evaluate: {mk.text(model['uri'])}</h1><p>{line}</p>"
            f'<p>Data: <a href="report.json">report.json</a></p></header>')


def write_html(report: dict, url: str) -> str:
    """Write the page for a full report (as report.json holds it) to `url`; return `url`."""
    title = f"cemiray evaluate: {report['model']['uri']}"
    sections = [_units_section()]
    if report["verification"]:
        sections.append(_verification_section(report))
    if _distributions(report):
        sections.append(_scores_section(report))
    if report["comparisons"]:
        sections.append(_comparisons_section(report))
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{mk.text(title)}</title><style>{mk.STYLE}</style></head>\n<body>"
            + _header(report) + "\n".join(sections)
            + f"<script>{mk.IMAGE_CHECK}</script></body></html>\n")
    storage.atomic_write_text(url, page)
    return url
