"""The inline CSS and vanilla JS of the circuit-graph fragment (:mod:`refusal.circuit.graph_view`).

The script finds its fragment by id (``__UID__`` is replaced by the JSON-quoted uid), parses the graph from the
fragment's ``application/json`` block and wires the category filter, the |weight| slider and the node tooltip. A
node is hidden when the selected category's circuit does not hold it; a link when it belongs to another
category, its |weight| is under the threshold or an end is hidden. Tooltip text is set with ``textContent``, never
parsed as HTML.
"""

CSS = """
.rc-graph{position:relative;margin:0.8em 0;font-size:0.9em}
.rc-graph .rc-controls{margin-bottom:0.4em}
.rc-graph .rc-legend{margin-bottom:0.4em;font-size:0.85em}
.rc-graph .rc-key{margin-right:1em;white-space:nowrap}
.rc-graph .rc-key i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:50%}
.rc-graph .rc-scroll{overflow:auto;max-height:80vh;border:1px solid #ddd}
.rc-graph .rc-svg{display:block}
.rc-graph .rc-axis{font-size:11px;fill:#555}
.rc-graph .rc-link{stroke-opacity:0.55}
.rc-graph .rc-link.rc-hl{stroke-opacity:1}
.rc-graph .rc-node{stroke:#fff;stroke-width:1.5;cursor:pointer}
.rc-graph .rc-node:hover,.rc-graph .rc-node:focus{stroke:#000;outline:none}
.rc-graph .rc-caption{font-style:italic;font-size:0.85em}
.rc-graph .rc-tip{position:absolute;z-index:10;background:#fff;border:1px solid #888;padding:4px 8px;
 box-shadow:0 2px 6px rgba(0,0,0,.2);font-size:0.85em;max-width:360px;text-align:left}
.rc-graph .rc-tip table{margin:2px 0;font-size:1em}
.rc-graph .rc-tip td{border:none;padding:0 6px 0 0;text-align:left}
""".strip()

SCRIPT = r"""
(function () {
  "use strict";
  var root = document.getElementById(__UID__);
  if (!root || root.getAttribute("data-ready")) { return; }
  root.setAttribute("data-ready", "1");
  var g = JSON.parse(root.querySelector('script[type="application/json"]').textContent);
  var nodeEls = Array.prototype.slice.call(root.querySelectorAll("[data-node]"));
  var linkEls = Array.prototype.slice.call(root.querySelectorAll("[data-link]"));
  var sel = root.querySelector("select"), slider = root.querySelector('input[type="range"]');
  var thr = root.querySelector(".rc-thr"), count = root.querySelector(".rc-count"), tip = root.querySelector(".rc-tip");
  var href = root.getAttribute("data-dashboard-href");
  var index = {}, hideTimer = null;
  g.nodes.forEach(function (n, i) { index[n.node_id] = i; });

  function apply() {
    var cat = sel.value, t = parseFloat(slider.value) || 0, shown = 0;
    var on = g.nodes.map(function (n) { return !cat || n.categories.indexOf(cat) >= 0; });
    nodeEls.forEach(function (el) { el.style.display = on[+el.getAttribute("data-node")] ? "" : "none"; });
    linkEls.forEach(function (el) {
      var l = g.links[+el.getAttribute("data-link")];
      var vis = (!cat || l.category === cat) && Math.abs(l.weight || 0) >= t && on[index[l.source]] && on[index[l.target]];
      el.style.display = vis ? "" : "none";
      if (vis) { shown += 1; }
    });
    thr.textContent = t.toPrecision(3);
    count.textContent = "(" + shown + " of " + g.links.length + " links shown)";
  }

  function add(parent, tag, text) {
    var el = document.createElement(tag);
    if (text !== undefined) { el.textContent = text; }
    parent.appendChild(el);
    return el;
  }

  function fill(n) {
    while (tip.firstChild) { tip.removeChild(tip.firstChild); }
    add(add(tip, "div"), "b", n.node_id);
    add(tip, "div", n.feature_type === "logit" ? "the circuits' metric (" + n.feature + "): each link is a node's " +
        "attribution to it in one category" : n.feature_type + ", layer " + n.layer +
        (n.ctx_idx === null ? "" : ", position " + n.ctx_idx) + (n.shared ? ", shared by every category" : ""));
    add(tip, "div", "categories: " + n.categories.join(", "));
    var table = add(tip, "table");
    Object.keys(n.attribution).sort().forEach(function (c) {
      var row = add(table, "tr");
      add(row, "td", c);
      add(row, "td", n.attribution[c] === null ? "\u2013" : Number(n.attribution[c]).toPrecision(4));
    });
    if (href !== null && n.dashboard) {
      if (href === "" && !document.getElementById(n.dashboard)) {
        add(tip, "div", "no dashboard card for this feature on this page");
      } else {
        var a = add(add(tip, "div"), "a", "feature dashboard \u2192");
        a.href = href + "#" + n.dashboard;
      }
    }
  }

  function highlight(id, on) {
    linkEls.forEach(function (el) {
      var l = g.links[+el.getAttribute("data-link")];
      if (l.source === id || l.target === id) { el.classList.toggle("rc-hl", on); }
    });
  }

  function show(el) {
    clearTimeout(hideTimer);
    var n = g.nodes[+el.getAttribute("data-node")];
    fill(n);
    tip.hidden = false;
    var r = root.getBoundingClientRect(), b = el.getBoundingClientRect();
    tip.style.left = Math.max(0, b.right - r.left + 6) + "px";
    tip.style.top = Math.max(0, b.top - r.top - 4) + "px";
    highlight(n.node_id, true);
  }

  function hideSoon(el) {
    highlight(g.nodes[+el.getAttribute("data-node")].node_id, false);
    clearTimeout(hideTimer);
    hideTimer = setTimeout(function () { tip.hidden = true; }, 400);
  }

  nodeEls.forEach(function (el) {
    el.addEventListener("mouseenter", function () { show(el); });
    el.addEventListener("focus", function () { show(el); });
    el.addEventListener("mouseleave", function () { hideSoon(el); });
    el.addEventListener("blur", function () { hideSoon(el); });
  });
  tip.addEventListener("mouseenter", function () { clearTimeout(hideTimer); });
  tip.addEventListener("mouseleave", function () { tip.hidden = true; });
  sel.addEventListener("change", apply);
  slider.addEventListener("input", apply);
  apply();
})();
""".strip()
