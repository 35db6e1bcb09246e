/* Conveyor dashboard: live statuses over WebSockets (/ws/runs/<id>/ for a run's page, /ws/runs/
 * for the runs list; polling the small JSON endpoints only while the socket is down), the
 * membership forms' confirmations, and deploy decisions.
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

  // --- Live statuses: a WebSocket (runs.consumers), and polling the JSON endpoints only while
  // it is down (no channel layer, a proxy without WebSockets). `handlers.message` gets each
  // message, `handlers.live(true|false)` says which of the two is in use.

  function live(path, handlers) {
    var delay = 1000;
    var stopped = false;
    var current = null;
    function connect() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var socket;
      try {
        socket = new WebSocket(scheme + location.host + path);
      } catch (error) {
        handlers.live(false);
        return;
      }
      current = socket;
      socket.onmessage = function (event) {
        var message = JSON.parse(event.data);
        if (message.type === "ready") {
          delay = 1000;
          handlers.live(!!message.live);
          return;
        }
        handlers.message(message);
      };
      socket.onclose = function (event) {
        handlers.live(false);
        // 4403: not (or no longer) allowed to see it; the page stays as it is.
        if (stopped || event.code === 4403) return;
        setTimeout(connect, delay);
        delay = Math.min(30000, delay * 2);
      };
    }
    connect();
    return {
      stop: function () { stopped = true; },
      send: function (message) {
        if (current && current.readyState === WebSocket.OPEN) current.send(JSON.stringify(message));
      },
    };
  }

  // Durations of what still runs count up in the browser between messages: each one has a
  // base (seconds, as the server last said) and the time it was said.
  function Clock() {
    this.bases = {};
    var self = this;
    setInterval(function () { self.tick(); }, 1000);
  }
  Clock.prototype.set = function (key, seconds, running, nodes) {
    if (running && seconds !== null && seconds !== undefined) {
      this.bases[key] = { seconds: seconds, at: Date.now(), nodes: nodes };
    } else {
      delete this.bases[key];
    }
  };
  Clock.prototype.tick = function () {
    var now = Date.now();
    Object.keys(this.bases).forEach(function (key) {
      var base = this.bases[key];
      var text = duration(base.seconds + (now - base.at) / 1000);
      base.nodes.forEach(function (node) { node.textContent = text; });
    }, this);
  };

  // --- The runs list: statuses of the runs shown, and a note when a new run would be listed.

  function followList(table) {
    var active = (table.dataset.active || "").split(",");
    var clock = new Clock();
    var polling = null;
    var filters = JSON.parse(table.dataset.filters || "{}");

    function isActive(status) { return active.indexOf(status) >= 0; }
    function rowStatus(row) {
      var status = row.querySelector("[data-role=run-status]");
      return status ? status.className.replace(/^status status-/, "").toUpperCase() : "";
    }
    function show(run) {
      var row = table.querySelector('tr[data-run="' + run.id + '"]');
      if (!row) {
        noteNew(run);
        return;
      }
      setStatus(row.querySelector("[data-role=run-status]"), run.status);
      var cell = row.querySelector("[data-role=run-duration]");
      cell.textContent = duration(run.duration_s);
      clock.set(run.id, run.duration_s, isActive(run.status), [cell]);
    }
    function noteNew(run) {
      var note = document.querySelector("[data-role=new-runs]");
      if (!note || table.dataset.firstPage !== "1") return;
      var wanted = {
        repository: run.repository,
        branch: run.branch,
        status: run.status,
        trigger: run.trigger,
        pipeline: String(run.pipeline),
      };
      var matches = Object.keys(filters).every(function (name) { return wanted[name] === filters[name]; });
      if (matches) note.hidden = false;
    }
    table.querySelectorAll("tr[data-run]").forEach(function (row) {
      var cell = row.querySelector("[data-role=run-duration]");
      if (isActive(rowStatus(row)) && cell.dataset.elapsed) {
        clock.set(row.dataset.run, parseFloat(cell.dataset.elapsed), true, [cell]);
      }
    });

    function poll() {
      var rows = Array.prototype.filter.call(table.querySelectorAll("tr[data-run]"), function (row) {
        return isActive(rowStatus(row));
      });
      if (!rows.length) return Promise.resolve();
      var query = rows.map(function (row) { return "id=" + encodeURIComponent(row.dataset.run); }).join("&");
      return getJson(table.dataset.poll + "?" + query).then(function (data) { data.runs.forEach(show); });
    }
    function startPolling() {
      if (polling) return;
      polling = setInterval(function () { poll().catch(function () {}); }, LIST_POLL_MS);
    }
    function activeIds() {
      return Array.prototype.filter.call(table.querySelectorAll("tr[data-run]"), function (row) {
        return isActive(rowStatus(row));
      }).map(function (row) { return row.dataset.run; });
    }
    var socket = live(table.dataset.ws, {
      message: function (message) { if (message.type === "runs") show(message.run); },
      live: function (on) {
        table.dataset.live = on ? "websocket" : "polling";
        if (on) {
          if (polling) clearInterval(polling);
          polling = null;
          // Whatever changed before the subscription (since the page was rendered, or while
          // the socket was down): the socket answers with the runs' current statuses.
          var ids = activeIds();
          if (ids.length) socket.send({ type: "snapshot", ids: ids });
        } else {
          startPolling();
        }
      },
    });
  }

  // --- A run's page: its jobs' statuses in the graph and the table, from the run's socket
  // (or polling); reload when the run's shape or status changes (a retry adds an attempt; a
  // finished run shows other buttons).

  function followRun(graph) {
    var runStatus = document.querySelector("h1 [data-role=run-status]");
    var clock = new Clock();
    var polling = null;
    var socket = null;
    function shownIds() {
      var ids = {};
      graph.querySelectorAll("[data-job]").forEach(function (node) { ids[node.dataset.job] = true; });
      return Object.keys(ids).sort().join(",");
    }
    function apply(data) {
      var ids = data.jobs.map(function (job) { return job.id; }).sort().join(",");
      var statusChanged = runStatus && runStatus.className !== "status status-" + data.run.status.toLowerCase();
      if (ids !== shownIds() || statusChanged) {
        if (socket) socket.stop();
        location.reload();
        return;
      }
      data.jobs.forEach(function (job) {
        var times = [];
        document.querySelectorAll('[data-job="' + job.id + '"]').forEach(function (node) {
          if (node.classList.contains("graph-job")) node.className = "graph-job job-" + job.status.toLowerCase();
          setStatus(node.querySelector("[data-role=job-status]"), job.status);
          var time = node.querySelector("[data-role=job-duration]");
          if (time) {
            time.textContent = duration(job.duration_s);
            times.push(time);
          }
        });
        clock.set(job.id, job.duration_s, job.status === "RUNNING", times);
      });
      var total = document.querySelector("[data-role=run-duration]");
      if (total) {
        total.textContent = duration(data.run.duration_s);
        clock.set("run", data.run.duration_s, !data.run.finished, [total]);
      }
      if (data.run.finished && socket) socket.stop();
    }
    function poll() {
      getJson(graph.dataset.poll).then(function (data) {
        apply(data);
        if (data.run.finished) stopPolling();
      }).catch(function () {});
    }
    function stopPolling() {
      if (polling) clearInterval(polling);
      polling = null;
    }
    socket = live(graph.dataset.ws, {
      message: function (message) { if (message.type === "run") apply(message); },
      live: function (on) {
        graph.dataset.live = on ? "websocket" : "polling";
        if (on) stopPolling();
        else if (!polling) polling = setInterval(poll, RUN_POLL_MS);
      },
    });
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
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
