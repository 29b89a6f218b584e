// Draws the trend charts from /trends/data.json (rollups only). No external requests.
(function () {
  "use strict";
  var COLOURS = {blocked: "#6e40c9", root: "#a40e26", unverified: "#0c4a6e",
                 unenforced: "#9a6700", compliant: "#116329", accepted: "#57606a"};
  var DASH = {blocked: [], root: [6, 3], unverified: [2, 2], unenforced: [8, 2, 2, 2],
              compliant: [1, 0]};
  var cache = {};

  function load(src) {
    if (!cache[src]) {
      cache[src] = fetch(src, {headers: {"Accept": "application/json"}}).then(function (r) {
        if (!r.ok) { throw new Error("trend data: HTTP " + r.status); }
        return r.json();
      });
    }
    return cache[src];
  }

  function empty(canvas, text) {
    var p = document.createElement("p");
    p.className = "muted";
    p.textContent = text;
    canvas.replaceWith(p);
  }

  var DRAW = {
    "states-chart": function (canvas, d) {
      if (!d.days.length) { return empty(canvas, "No history yet."); }
      var sets = Object.keys(d.states).map(function (s) {
        // State is told apart by line style and legend text, not colour alone.
        return {label: d.labels[s], data: d.states[s], borderColor: COLOURS[s],
                backgroundColor: COLOURS[s], borderDash: DASH[s], pointRadius: 0,
                borderWidth: 2, hidden: s === "compliant"};
      });
      if (d.accepted) {  // non-compliant but covered by an exception: apart from open
        sets.push({label: "Accepted (exception)", data: d.accepted, borderColor: COLOURS.accepted,
                   backgroundColor: COLOURS.accepted, borderDash: [10, 4], pointRadius: 0,
                   borderWidth: 2});
      }
      return new Chart(canvas, {type: "line", data: {labels: d.days, datasets: sets},
        options: {animation: false, maintainAspectRatio: false, interaction: {mode: "index", intersect: false},
                  scales: {y: {beginAtZero: true, title: {display: true, text: "containers"}}}}});
    },
    "weeks-chart": function (canvas, d) {
      if (!d.weeks.length) { return empty(canvas, "No findings opened or resolved yet."); }
      return new Chart(canvas, {type: "bar", data: {labels: d.weeks, datasets: [
        {label: "Opened", data: d.opened, backgroundColor: "#a40e26"},
        {label: "Resolved", data: d.resolved, backgroundColor: "#116329"}]},
        options: {animation: false, maintainAspectRatio: false, scales: {y: {beginAtZero: true}}}});
    },
    "mttr-chart": function (canvas, d) {
      if (!d.weeks.length) { return empty(canvas, "Nothing resolved yet."); }
      return new Chart(canvas, {type: "line", data: {labels: d.weeks, datasets: [
        {label: "Mean days to remediate", data: d.mttr_days, borderColor: "#0a5bd3",
         backgroundColor: "#0a5bd3", spanGaps: true}]},
        options: {animation: false, maintainAspectRatio: false, scales: {y: {beginAtZero: true}}}});
    }
  };

  document.addEventListener("DOMContentLoaded", function () {
    var canvases = Array.prototype.slice.call(document.querySelectorAll("canvas[data-src]"));
    Promise.all(canvases.map(function (canvas) {
      return load(canvas.dataset.src).then(function (d) { DRAW[canvas.id](canvas, d); });
    })).then(function () { document.body.dataset.chartsReady = "yes"; },
             function (e) { document.body.dataset.chartsReady = "error"; console.error(e); });
  });
})();
