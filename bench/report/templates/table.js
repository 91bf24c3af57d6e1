// Sorting, filtering and column toggles for the report's tables. Plain JavaScript,
// inlined into the page: no network, works from file://. The page is complete without
// it (every row is in the HTML); this only reorders and hides rows and columns.
(function () {
  "use strict";

  // Text of a cell as a number for sorting, or null when it holds no number (n/a, –, states).
  function numeric(text) {
    var t = text.replace(/[=,×%⚠+]/g, " ").trim();
    var m = t.match(/^-?\d+(\.\d+)?([eE]-?\d+)?/);
    return m ? parseFloat(m[0]) : null;
  }

  function cellText(row, index) {
    var cell = row.cells[index];
    if (!cell) return "";
    return cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
  }

  function sortBy(table, index, th) {
    var body = table.tBodies[0];
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    var headers = table.tHead.rows[0].cells;
    for (var i = 0; i < headers.length; i++) headers[i].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    var rows = Array.prototype.slice.call(body.rows);
    var pinned = rows.filter(function (r) { return r.classList.contains("pinned"); });
    var rest = rows.filter(function (r) { return !r.classList.contains("pinned"); });
    rest.sort(function (a, b) {
      var ta = cellText(a, index), tb = cellText(b, index);
      var na = numeric(ta), nb = numeric(tb);
      if (na !== null && nb !== null) return sign * (na - nb);
      if (na !== null) return -1;  // rows without a number (n/a, not run) stay last
      if (nb !== null) return 1;
      return sign * ta.localeCompare(tb);
    });
    pinned.concat(rest).forEach(function (r) { body.appendChild(r); });
  }

  function makeSortable(table) {
    var headers = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(headers, function (th, index) {
      th.classList.add("sort");
      th.setAttribute("tabindex", "0");
      th.addEventListener("click", function () { sortBy(table, index, th); });
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortBy(table, index, th); }
      });
    });
  }

  // Rows carry data-model, data-dataset, data-kind and data-budget; a select per key.
  function applyFilters() {
    var selects = document.querySelectorAll("select[data-filter]");
    var wanted = {};
    Array.prototype.forEach.call(selects, function (s) { if (s.value) wanted[s.getAttribute("data-filter")] = s.value; });
    var rows = document.querySelectorAll("tr[data-model]");
    var shown = 0;
    Array.prototype.forEach.call(rows, function (r) {
      var ok = Object.keys(wanted).every(function (k) {
        var v = r.getAttribute("data-" + k);
        return v === null || v === wanted[k];
      });
      r.hidden = !ok;
      if (ok && r.closest("#cells")) shown++;
    });
    var counter = document.getElementById("shown-cells");
    if (counter) counter.textContent = String(shown);
    var groups = document.querySelectorAll("section.group[data-model]");
    Array.prototype.forEach.call(groups, function (g) {
      g.hidden = !!((wanted.model && g.getAttribute("data-model") !== wanted.model) ||
                    (wanted.dataset && g.getAttribute("data-dataset") !== wanted.dataset));
    });
  }

  function columnToggles(table, box) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, index) {
      var label = document.createElement("label");
      var input = document.createElement("input");
      input.type = "checkbox";
      input.checked = !th.classList.contains("off");
      input.setAttribute("data-col", String(index));
      input.addEventListener("change", function () {
        var rows = table.rows;
        for (var i = 0; i < rows.length; i++) {
          var c = rows[i].cells[index];
          if (c) c.classList.toggle("off", !input.checked);
        }
      });
      label.appendChild(input);
      label.appendChild(document.createTextNode(" " + th.textContent.trim()));
      box.appendChild(label);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), makeSortable);
    Array.prototype.forEach.call(document.querySelectorAll("select[data-filter]"), function (s) {
      s.addEventListener("change", applyFilters);
    });
    var cells = document.getElementById("cells");
    var box = document.getElementById("column-toggles");
    if (cells && box) columnToggles(cells, box);
    document.documentElement.classList.add("js");
    applyFilters();
  });
})();
