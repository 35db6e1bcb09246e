/* Conveyor dashboard: live statuses by polling small JSON endpoints, and deploy decisions.
 * Plain JS, no build step. Text from the server goes in with textContent only. */
(function () {
  "use strict";

  var RUN_POLL_MS = 2000;
  var LIST_POLL_MS = 3000;

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    var total = Math.max(0, Math.round(seconds));
    var hours = Math.floor(total / 3600);
    var minutes = Math.floor((total % 3600) / 60);
    var secs = total % 60;
    var two = function (v) { return String(v).padStart(2, "0"); };
    if (hours) return hours + "h " + two(minutes) + "m";
    if (minutes) return minutes + "m " + two(secs) + "s";
    return secs + "s";
  }

  function label(status) {
    return status.charAt(0) + status.slice(1).toLowerCase();
  }

  function setStatus(node, status) {
    if (!node || !status) return;
    node.textContent = label(status);
    node.className = "status status-" + status.toLowerCase();
  }

  function getJson(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    });
  }

  function cookie(name) {
    var match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : "";
  }

  // --- The runs list: poll the statuses of the active runs shown.

  function followList(table) {
    var active = (table.dataset.active || "").split(",");
    function activeRows() {
      return Array.prototype.filter.call(table.querySelectorAll("tr[data-run]"), function (row) {
        var status = row.querySelector("[data-role=run-status]");
        return status && active.indexOf(status.className.replace(/^status status-/, "").toUpperCase()) >= 0;
      });
    }
    function tick() {
      var rows = activeRows();
      if (!rows.length) return;
      var query = rows.map(function (row) { return "id=" + encodeURIComponent(row.dataset.run); }).join("&");
      getJson(table.dataset.poll + "?" + query).then(function (data) {
        data.runs.forEach(function (run) {
          var row = table.querySelector('tr[data-run="' + run.id + '"]');
          if (!row) return;
          setStatus(row.querySelector("[data-role=run-status]"), run.status);
          row.querySelector("[data-role=run-duration]").textContent = duration(run.duration_s);
        });
      }).catch(function () {}).then(function () { setTimeout(tick, LIST_POLL_MS); });
    }
    setTimeout(tick, LIST_POLL_MS);
  }

  // --- A run's page: poll its jobs, update the graph and the table; reload when the run's
  // shape or status changes (a retry adds an attempt; a finished run shows other buttons).

  function followRun(graph) {
    var runStatus = document.querySelector("h1 [data-role=run-status]");
    function shownIds() {
      var ids = {};
      graph.querySelectorAll("[data-job]").forEach(function (node) { ids[node.dataset.job] = true; });
      return Object.keys(ids).sort().join(",");
    }
    function tick() {
      getJson(graph.dataset.poll).then(function (data) {
        var ids = data.jobs.map(function (job) { return job.id; }).sort().join(",");
        var statusChanged = runStatus && runStatus.className !== "status status-" + data.run.status.toLowerCase();
        if (ids !== shownIds() || statusChanged) {
          location.reload();
          return;
        }
        data.jobs.forEach(function (job) {
          document.querySelectorAll('[data-job="' + job.id + '"]').forEach(function (node) {
            if (node.classList.contains("graph-job")) node.className = "graph-job job-" + job.status.toLowerCase();
            setStatus(node.querySelector("[data-role=job-status]"), job.status);
            var time = node.querySelector("[data-role=job-duration]");
            if (time) time.textContent = duration(job.duration_s);
          });
        });
        var total = document.querySelector("[data-role=run-duration]");
        if (total) total.textContent = duration(data.run.duration_s);
        if (!data.run.finished) setTimeout(tick, RUN_POLL_MS);
      }).catch(function () { setTimeout(tick, RUN_POLL_MS * 2); });
    }
    setTimeout(tick, RUN_POLL_MS);
  }

  // --- Deploy decisions: POST to /deployments/<id>/approve|reject/ (JSON answers).

  function decide(button) {
    var error = document.querySelector(".decide-error");
    button.disabled = true;
    fetch(button.dataset.decide, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": cookie("csrftoken"), Accept: "application/json" },
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.ok) { location.reload(); return; }
        button.disabled = false;
        if (error) {
          error.textContent = body.error || ("HTTP " + response.status);
          error.hidden = false;
        }
      });
    });
  }

  function init() {
    document.querySelectorAll("table.runs[data-poll]").forEach(followList);
    var graph = document.getElementById("graph");
    if (graph && graph.dataset.active === "1") followRun(graph);
    document.querySelectorAll("[data-decide]").forEach(function (button) {
      button.addEventListener("click", function () { decide(button); });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
