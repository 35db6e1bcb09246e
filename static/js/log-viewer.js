/* Conveyor log viewer: plain JS, no build step, no dependencies.
 *
 * Renders logs with the same rules and class names as logs/rendering.py (ANSI SGR colours,
 * carriage-return overwrites, GitLab sections, line anchors, timestamps) and follows live
 * steps over the WebSocket /ws/steps/<id>/?offset=N, reconnecting from the last offset seen.
 * Log text is untrusted: the DOM is built with textContent and class names only, never
 * innerHTML. `renderHtml` (an HTML string, escaped) exists for tests, which compare it with
 * the server's renderer.
 */
(function (root, factory) {
  "use strict";
  var api = factory();
  if (typeof module === "object" && module.exports) {
    module.exports = api;
  } else {
    root.ConveyorLog = api;
  }
  if (typeof document !== "undefined") {
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", function () { api.initAll(document); });
    } else {
      api.initAll(document);
    }
  }
})(this, function () {
  "use strict";

  // --- Parsing (shared by the DOM and the string renderer).

  var ESCAPES = /\x1b\[([0-9;:?]*)([ -\/]*[@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -\/]*[0-~]?|[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]/g;
  var SECTION = /^(?:\x1b\[0K)?section_(start|end):([0-9]{1,12}):([A-Za-z0-9_.\-]{1,200})(\[[^\]\r\n]*\])?\r(?:\x1b\[0K)?([\s\S]*)$/;
  var CUBE = [0, 95, 135, 175, 215, 255];

  function Style() { this.reset(); }
  Style.prototype.reset = function () {
    this.bold = false; this.faint = false; this.italic = false; this.underline = false;
    this.fg = null; this.bg = null;
  };
  Style.prototype.copy = function () {
    var s = new Style();
    s.bold = this.bold; s.faint = this.faint; s.italic = this.italic; s.underline = this.underline;
    s.fg = this.fg; s.bg = this.bg;
    return s;
  };
  Style.prototype.isPlain = function () {
    return !this.bold && !this.faint && !this.italic && !this.underline && this.fg === null && this.bg === null;
  };
  Style.prototype.classes = function () {
    var out = [];
    if (this.bold) out.push("ansi-b");
    if (this.faint) out.push("ansi-f");
    if (this.italic) out.push("ansi-i");
    if (this.underline) out.push("ansi-u");
    if (typeof this.fg === "number") out.push("ansi-fg-" + this.fg);
    if (typeof this.bg === "number") out.push("ansi-bg-" + this.bg);
    return out;
  };
  Style.prototype.styles = function () {
    var out = [];
    if (typeof this.fg === "string") out.push("color:" + this.fg);
    if (typeof this.bg === "string") out.push("background-color:" + this.bg);
    return out;
  };

  function hex(r, g, b) {
    return "#" + [r, g, b].map(function (v) { return Math.min(255, v).toString(16).padStart(2, "0"); }).join("");
  }

  function extendedColour(rest) {
    if (rest.length >= 2 && rest[0] === 5) {
      var n = rest[1];
      if (n < 16) return [n, 2];
      if (n < 232) {
        n -= 16;
        return [hex(CUBE[Math.floor(n / 36) % 6], CUBE[Math.floor(n / 6) % 6], CUBE[n % 6]), 2];
      }
      var grey = Math.min(255, 8 + 10 * (n - 232));
      return [hex(grey, grey, grey), 2];
    }
    if (rest.length >= 4 && rest[0] === 2) return [hex(rest[1], rest[2], rest[3]), 4];
    return [null, rest.length && rest[0] !== 2 && rest[0] !== 5 ? rest.length : 0];
  }

  Style.prototype.apply = function (params) {
    var codes = params ? params.split(/[;:]/).map(function (p) { return /^[0-9]+$/.test(p) ? parseInt(p, 10) : 0; }) : [0];
    for (var i = 0; i < codes.length; i++) {
      var code = codes[i];
      if (code === 0) this.reset();
      else if (code === 1) this.bold = true;
      else if (code === 2) this.faint = true;
      else if (code === 3) this.italic = true;
      else if (code === 4) this.underline = true;
      else if (code === 22) { this.bold = false; this.faint = false; }
      else if (code === 23) this.italic = false;
      else if (code === 24) this.underline = false;
      else if (code >= 30 && code <= 37) this.fg = code - 30;
      else if (code >= 90 && code <= 97) this.fg = code - 90 + 8;
      else if (code === 39) this.fg = null;
      else if (code >= 40 && code <= 47) this.bg = code - 40;
      else if (code >= 100 && code <= 107) this.bg = code - 100 + 8;
      else if (code === 49) this.bg = null;
      else if (code === 38 || code === 48) {
        var result = extendedColour(codes.slice(i + 1));
        if (result[0] !== null) {
          if (code === 38) this.fg = result[0]; else this.bg = result[0];
        }
        i += result[1];
      }
    }
  };

  // One line's text as segments [{text, style}]; `style` is the state at its start, updated.
  function parseLine(raw, style) {
    var segments = [];
    var current = [];
    function closeText() {
      var text = current.join("");
      current = [];
      if (text) segments.push({ text: text, style: style.isPlain() ? null : style.copy() });
    }
    function overwrite(text) {
      var parts = text.split("\r");
      if (parts.length > 1) { current = []; segments = []; }
      current.push(parts[parts.length - 1]);
    }
    if (raw.endsWith("\r")) raw = raw.slice(0, -1);
    var position = 0;
    var match;
    ESCAPES.lastIndex = 0;
    while ((match = ESCAPES.exec(raw)) !== null) {
      if (match[0] === "") { ESCAPES.lastIndex++; continue; }
      overwrite(raw.slice(position, match.index));
      position = ESCAPES.lastIndex;
      if (match[2] === "m") {
        closeText();
        style.apply(match[1]);
      }
    }
    overwrite(raw.slice(position));
    closeText();
    return segments;
  }

  function duration(seconds) {
    seconds = Math.max(0, seconds);
    var minutes = Math.floor(seconds / 60);
    var hours = Math.floor(minutes / 60);
    seconds %= 60;
    minutes %= 60;
    var two = function (v) { return String(v).padStart(2, "0"); };
    if (hours) return hours + "h " + two(minutes) + "m";
    return minutes ? minutes + "m " + two(seconds) + "s" : seconds + "s";
  }

  /* Turns a stream of text into lines and sections, calling a sink:
   *   sink.line(number, segments, at)                      a log line
   *   sink.open(number, segments, at, name, started, collapsed)   a section and its header line
   *   sink.close(name, ended)                              the innermost open section ends
   *   sink.partial(number, segments, at)                   the unfinished last line (or null)
   */
  function LogParser(sink, firstLine) {
    this.sink = sink;
    this.style = new Style();
    this.number = firstLine || 1;
    this.stack = [];
    this.partial = "";
    this.partialAt = null;
  }
  LogParser.prototype.append = function (content, at) {
    if (!content) return;
    if (this.partial === "") this.partialAt = at || null;
    var pieces = content.split("\n");
    for (var i = 0; i < pieces.length - 1; i++) {
      this.commit(this.partial + pieces[i], this.partialAt);
      this.partial = "";
      this.partialAt = at || null;
    }
    this.partial += pieces[pieces.length - 1];
    this.showPartial();
  };
  LogParser.prototype.finish = function () {
    if (this.partial) this.commit(this.partial, this.partialAt);
    this.partial = "";
    this.showPartial();
  };
  LogParser.prototype.showPartial = function () {
    if (!this.sink.partial) return;
    if (!this.partial || /^(?:\x1b\[0K)?section_/.test(this.partial)) {
      this.sink.partial(this.number, null, null);
    } else {
      this.sink.partial(this.number, parseLine(this.partial, this.style.copy()), this.partialAt);
    }
  };
  LogParser.prototype.commit = function (raw, at) {
    var marker = SECTION.exec(raw);
    if (marker && marker[1] === "end") {
      var names = this.stack.map(function (s) { return s.name; });
      if (names.indexOf(marker[3]) >= 0) {
        while (this.stack.length) {
          var section = this.stack.pop();
          this.sink.close(section.name, parseInt(marker[2], 10), section.started);
          if (section.name === marker[3]) break;
        }
      }
      if (!marker[5].replace(/\r/g, "")) return;
      raw = marker[5];
      marker = null;
    }
    var number = this.number++;
    if (marker) {
      var started = parseInt(marker[2], 10);
      this.stack.push({ name: marker[3], started: started });
      this.sink.open(number, parseLine(marker[5], this.style), at, marker[3], started,
        (marker[4] || "").indexOf("collapsed=true") >= 0);
    } else {
      this.sink.line(number, parseLine(raw, this.style), at);
    }
  };

  // --- An HTML string, exactly as logs.rendering.render_log writes it (for tests).

  function escapeHtml(text) {
    return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#x27;");
  }

  function segmentsHtml(segments) {
    return segments.map(function (s) {
      if (!s.style) return escapeHtml(s.text);
      var classes = s.style.classes();
      var styles = s.style.styles();
      var attrs = (classes.length ? ' class="' + classes.join(" ") + '"' : "") +
        (styles.length ? ' style="' + styles.join(";") + '"' : "");
      return "<span" + attrs + ">" + escapeHtml(s.text) + "</span>";
    }).join("");
  }

  function renderHtml(text, prefix) {
    prefix = prefix || "L";
    var root = [];
    var stack = [];
    function target() { return stack.length ? stack[stack.length - 1].body : root; }
    var parser = new LogParser({
      line: function (n, segments) { target().push({ n: n, html: segmentsHtml(segments) }); },
      open: function (n, segments, at, name, started, collapsed) {
        var section = { n: n, html: segmentsHtml(segments), started: started, collapsed: collapsed, ended: null, body: [] };
        target().push(section);
        stack.push(section);
      },
      close: function (name, ended) { stack.pop().ended = ended; },
    });
    parser.append(text, null);
    parser.finish();
    var out = [];
    function gutter(n) { return '<a class="log-ln" href="#' + prefix + n + '">' + n + "</a>"; }
    function emit(items) {
      items.forEach(function (item) {
        if (!item.body) {
          out.push('<div class="log-line" id="' + prefix + item.n + '">' + gutter(item.n));
          out.push('<span class="log-tx">' + item.html + "</span></div>\n");
          return;
        }
        var dur = item.ended === null ? "" : '<span class="log-duration">' + duration(item.ended - item.started) + "</span>";
        out.push('<details class="log-section"' + (item.collapsed ? "" : " open") + ">");
        out.push('<summary class="log-line log-section-header" id="' + prefix + item.n + '">' + gutter(item.n));
        out.push('<span class="log-tx">' + item.html + "</span>" + dur + "</summary>\n");
        emit(item.body);
        out.push("</details>\n");
      });
    }
    emit(root);
    return out.join("");
  }

  // --- The DOM.

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function lineContent(node, prefix, number, segments, at) {
    var anchor = el("a", "log-ln", String(number));
    anchor.href = "#" + prefix + number;
    node.appendChild(anchor);
    if (at) {
      var time = el("time", "log-ts", at.slice(11, 19));
      time.setAttribute("datetime", at);
      node.appendChild(time);
    }
    var text = el("span", "log-tx");
    segments.forEach(function (s) {
      if (!s.style) { text.appendChild(document.createTextNode(s.text)); return; }
      var span = el("span", s.style.classes().join(" "), s.text);
      var styles = s.style.styles();
      if (styles.length) span.setAttribute("style", styles.join(";"));
      text.appendChild(span);
    });
    node.appendChild(text);
    return node;
  }

  function DomSink(container, prefix, onChange) {
    this.container = container;
    this.prefix = prefix;
    this.stack = [];
    this.partialNode = null;
    this.onChange = onChange || function () {};
  }
  DomSink.prototype.target = function () {
    return this.stack.length ? this.stack[this.stack.length - 1].details : this.container;
  };
  DomSink.prototype.insert = function (node) {
    // Committed lines go before the provisional last line, which always stays at the end.
    var target = this.target();
    if (this.partialNode && this.partialNode.parentNode === target) target.insertBefore(node, this.partialNode);
    else target.appendChild(node);
  };
  DomSink.prototype.line = function (number, segments, at) {
    var node = lineContent(el("div", "log-line"), this.prefix, number, segments, at);
    node.id = this.prefix + number;
    this.insert(node);
  };
  DomSink.prototype.open = function (number, segments, at, name, started, collapsed) {
    var details = el("details", "log-section");
    details.open = !collapsed;
    var summary = lineContent(el("summary", "log-line log-section-header"), this.prefix, number, segments, at);
    summary.id = this.prefix + number;
    details.appendChild(summary);
    this.insert(details);
    this.stack.push({ details: details, summary: summary });
  };
  DomSink.prototype.close = function (name, ended, started) {
    var section = this.stack.pop();
    section.summary.appendChild(el("span", "log-duration", duration(ended - started)));
  };
  DomSink.prototype.partial = function (number, segments, at) {
    if (this.partialNode) { this.partialNode.remove(); this.partialNode = null; }
    if (segments) {
      this.partialNode = lineContent(el("div", "log-line log-partial"), this.prefix, number, segments, at);
      this.target().appendChild(this.partialNode);
    }
    this.onChange();
  };

  // --- Following a live step.

  function LiveLog(container, page) {
    this.container = container;
    this.page = page;
    this.offset = 0;
    this.finished = false;
    this.delay = 1000;
    this.parser = new LogParser(new DomSink(container, container.dataset.prefix || "L", page.changed.bind(page)));
    this.status = container.closest(".log-step") && container.closest(".log-step").querySelector("[data-role=step-status]");
    this.connect();
  }
  LiveLog.prototype.connect = function () {
    var self = this;
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + this.container.dataset.ws + "?offset=" + this.offset);
    this.socket = socket;
    socket.onmessage = function (event) { self.receive(JSON.parse(event.data)); };
    socket.onclose = function () {
      self.container.classList.remove("log-live");
      if (self.finished) return;
      // Resume from the last byte received: the server sends exactly what follows it.
      setTimeout(function () { self.connect(); }, self.delay);
      self.delay = Math.min(30000, self.delay * 2);
    };
  };
  LiveLog.prototype.receive = function (message) {
    if (message.type === "log") {
      if (message.end <= this.offset) return;
      this.parser.append(message.content, message.at);
      this.offset = message.end;
    } else if (message.type === "ready") {
      this.delay = 1000;
      if (message.live) this.container.classList.add("log-live");
    } else if (message.type === "status") {
      if (message.step) {
        setStatus(this.status, message.step.status);
        if (TERMINAL.indexOf(message.step.status) >= 0) {
          this.finished = true;
          this.parser.finish();
          this.socket.close(1000);
        }
      }
      if (message.job) setStatus(document.querySelector("[data-role=job-status]"), message.job.status);
    }
  };

  var TERMINAL = ["SUCCESS", "FAILURE", "CANCELLED", "SKIPPED"];

  function setStatus(node, status) {
    if (!node || !status) return;
    node.textContent = status.charAt(0) + status.slice(1).toLowerCase();
    node.className = "status status-" + status.toLowerCase();
  }

  // --- The page: search, follow, timestamps.

  function LogPage(section) {
    var self = this;
    this.section = section;
    this.search = section.querySelector(".log-search");
    this.count = section.querySelector(".log-search-count");
    this.follow = section.querySelector(".log-follow");
    this.timestamps = section.querySelector(".log-timestamps");
    this.matches = [];
    this.current = -1;
    this.ownScrollAt = 0;
    this.searchTimer = null;
    if (this.timestamps) {
      this.timestamps.addEventListener("change", function () {
        section.classList.toggle("show-ts", self.timestamps.checked);
      });
    }
    if (this.search) {
      this.search.addEventListener("input", function () { self.runSearch(); });
      this.search.addEventListener("keydown", function (event) {
        if (event.key === "Enter") { event.preventDefault(); self.next(event.shiftKey ? -1 : 1); }
      });
    }
    window.addEventListener("scroll", function () {
      if (!self.follow || Date.now() - self.ownScrollAt < 150) return;
      var fromBottom = document.documentElement.scrollHeight - window.innerHeight - window.scrollY;
      self.follow.checked = fromBottom < 40;
    });
    section.querySelectorAll(".log[data-live]").forEach(function (container) { new LiveLog(container, self); });
  }
  LogPage.prototype.changed = function () {
    var self = this;
    if (this.follow && this.follow.checked) {
      this.ownScrollAt = Date.now();
      window.scrollTo(0, document.documentElement.scrollHeight);
    }
    if (this.search && this.search.value && !this.searchTimer) {
      this.searchTimer = setTimeout(function () { self.searchTimer = null; self.runSearch(true); }, 300);
    }
  };
  LogPage.prototype.runSearch = function (keepPosition) {
    var query = this.search.value.toLowerCase();
    var lines = this.section.querySelectorAll(".log-line");
    var matches = [];
    lines.forEach(function (line) {
      var text = line.querySelector(".log-tx");
      var hit = query !== "" && text !== null && text.textContent.toLowerCase().indexOf(query) >= 0;
      line.classList.toggle("log-match", hit);
      line.classList.remove("log-current");
      if (hit) matches.push(line);
    });
    this.matches = matches;
    if (!keepPosition || this.current >= matches.length) this.current = -1;
    if (this.current >= 0) matches[this.current].classList.add("log-current");
    this.count.textContent = query ? (matches.length ? (this.current + 1) + " of " + matches.length : "no matches") : "";
  };
  LogPage.prototype.next = function (step) {
    if (!this.matches.length) return;
    if (this.current >= 0) this.matches[this.current].classList.remove("log-current");
    this.current = (this.current + step + this.matches.length) % this.matches.length;
    var line = this.matches[this.current];
    for (var node = line.parentNode; node && node !== this.section; node = node.parentNode) {
      if (node.tagName === "DETAILS") node.open = true;
    }
    line.classList.add("log-current");
    if (this.follow) this.follow.checked = false;
    line.scrollIntoView({ block: "center" });
    this.count.textContent = (this.current + 1) + " of " + this.matches.length;
  };

  function initAll(doc) {
    doc.querySelectorAll(".job-log").forEach(function (section) {
      if (!section.dataset.logInit) {
        section.dataset.logInit = "1";
        new LogPage(section);
      }
    });
  }

  return { Style: Style, parseLine: parseLine, LogParser: LogParser, renderHtml: renderHtml, initAll: initAll };
});
