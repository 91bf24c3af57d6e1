// The runtime selector of each "Speedups by runtime" section: shows one runtime's columns
// and plot, or all of them. Plain JavaScript, inlined into the page. Without it the
// selector stays hidden and every runtime's columns and plots are shown.
(function () {
  "use strict";

  function pick(box, value) {
    var marked = box.querySelectorAll("[data-runtime]");
    Array.prototype.forEach.call(marked, function (el) {
      el.hidden = !!value && el.getAttribute("data-runtime") !== value;
    });
    var rows = box.querySelectorAll("tr[data-row-runtime]");
    Array.prototype.forEach.call(rows, function (r) {
      r.classList.toggle("picked", !!value && r.getAttribute("data-row-runtime") === value);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var selects = document.querySelectorAll("select[data-runtime-select]");
    Array.prototype.forEach.call(selects, function (s) {
      var box = s.closest(".runtimes");
      var holder = s.closest(".runtime-pick");
      if (!box) return;
      if (holder) holder.hidden = false;
      s.addEventListener("change", function () { pick(box, s.value); });
      pick(box, s.value);
    });
  });
})();
