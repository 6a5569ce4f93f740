"""The stylesheet every cnnlens HTML page shares (the explanation report and the audit report),
declared once; each page adds only the rules of its own elements."""

#: typography, tables, figures: the look of every page
PAGE_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a;background:#fafbfc}
h1{font-size:1.5em;margin:0 0 4px} h2{font-size:1.2em;margin:28px 0 8px;border-bottom:1px solid #d5dbe1;padding-bottom:4px}
h3{font-size:1em;margin:18px 0 6px} .meta,.note{color:#5b6670;font-size:.9em}
table{border-collapse:collapse;font-size:.9em}
td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #e4e8ec;vertical-align:top}
th{color:#5b6670;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:0;background:#fff;border:1px solid #e0e5ea;border-radius:6px;padding:6px;text-align:center}
figcaption{font-size:.8em;color:#3b454f;margin-top:4px;word-wrap:break-word;overflow-wrap:anywhere}
"""
