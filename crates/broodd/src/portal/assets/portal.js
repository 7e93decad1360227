// brood portal: the little JavaScript the pages use. Every page works
// without it; with it, forms marked data-async post without leaving the
// page (their answer, a fragment of HTML from the portal, is shown in the
// form's .result), and elements marked data-events follow /ui/events, so a
// VM's state and a job's state, progress and outcome change in place
// without a reload. No build step, no library.
"use strict";

(function () {
  function result(form) {
    return form.querySelector(".result") || form;
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-async")) return;
    var button = ev.submitter;
    if (button && button.dataset.confirm && !window.confirm(button.dataset.confirm)) {
      ev.preventDefault();
      return;
    }
    ev.preventDefault();
    var data = new FormData(form);
    if (button && button.name) data.append(button.name, button.value);
    var out = result(form);
    out.textContent = "working…";
    form.setAttribute("aria-busy", "true");
    fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(data),
      credentials: "same-origin",
      headers: { "X-Portal-Async": "1" },
    })
      .then(function (resp) {
        return resp.text().then(function (text) {
          if (resp.status === 401) {
            window.location.assign("/ui/login");
            return;
          }
          // The portal's own fragment (escaped on the server).
          out.innerHTML = text;
          // What the post changed shows even if no event reached this page.
          if (resp.ok) refreshSoon();
        });
      })
      .catch(function (e) {
        out.textContent = "the portal could not be reached: " + e;
      })
      .finally(function () {
        form.removeAttribute("aria-busy");
      });
  });

  function rowOf(table, name) {
    var rows = table.querySelectorAll("tr[data-vm]");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-vm") === name) return rows[i];
    }
    return null;
  }

  function addRow(table, vm) {
    if (!table.tBodies) return null;
    var body = table.tBodies[0];
    if (!body || !table.classList.contains("vms")) return null;
    var tr = document.createElement("tr");
    tr.setAttribute("data-vm", vm.name);
    var link = document.createElement("a");
    link.href = "/ui/vms/" + encodeURIComponent(vm.name) + (table.dataset.unitQ || "");
    link.textContent = vm.name;
    var td = document.createElement("td");
    td.appendChild(link);
    tr.appendChild(td);
    var state = document.createElement("td");
    state.className = "state";
    tr.appendChild(state);
    var more = document.createElement("td");
    more.colSpan = 3;
    more.textContent = "(reload for details)";
    tr.appendChild(more);
    body.appendChild(tr);
    return tr;
  }

  // Regions marked data-refresh are fetched again (a fragment from the
  // portal) shortly after VM events, so bars and rows follow without a reload.
  var refreshTimer = null;
  function refreshSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      var regions = document.querySelectorAll("[data-refresh]");
      regions.forEach(function (el) {
        fetch(el.dataset.refresh, { credentials: "same-origin", headers: { "X-Portal-Async": "1" } })
          .then(function (resp) {
            if (!resp.ok) return;
            return resp.text().then(function (text) {
              var focused = el.contains(document.activeElement);
              if (!focused) el.innerHTML = text;
            });
          })
          .catch(function () {});
      });
    }, 400);
  }

  // A job event (`event: job`): the rows and fields of that job change in
  // place; a job no table shows yet brings the tables' rows again.
  var JOB_FIELDS = ["state", "progress", "outcome", "started_at", "finished_at"];
  function applyJob(data) {
    var j;
    try { j = JSON.parse(data); } catch (e) { return; }
    if (!j || typeof j.id !== "number") return;
    var els = document.querySelectorAll('[data-job="' + j.id + '"]');
    if (els.length === 0) {
      if (document.querySelector("table.jobs tbody[data-refresh]")) refreshSoon();
      return;
    }
    els.forEach(function (el) {
      JOB_FIELDS.forEach(function (f) {
        var cell = el.querySelector('[data-f="' + f + '"]');
        if (cell && typeof j[f] === "string") cell.textContent = j[f];
      });
    });
    if (!j.cancellable) {
      document.querySelectorAll('form.cancel[action="/ui/jobs/' + j.id + '/cancel"]')
        .forEach(function (f) { f.remove(); });
    }
    var live = document.querySelector(".live");
    if (live) live.textContent = "job " + j.id + " is " + j.state;
  }

  function follow(table) {
    var src = new EventSource(table.dataset.events);
    var live = document.querySelector(".live");
    src.onmessage = function (m) {
      var vm;
      try { vm = JSON.parse(m.data); } catch (e) { return; }
      if (!vm || typeof vm.name !== "string") return;
      var row = rowOf(table, vm.name) || addRow(table, vm);
      if (!row) return;
      var cell = row.querySelector(".state");
      if (cell) cell.textContent = String(vm.run_state);
      if (live) live.textContent = vm.name + " is " + vm.run_state;
      refreshSoon();
    };
    src.addEventListener("deleted", function (m) {
      var vm;
      try { vm = JSON.parse(m.data); } catch (e) { return; }
      var row = vm && rowOf(table, vm.name);
      if (row && table.classList.contains("vms")) row.remove();
      else if (row) { var c = row.querySelector(".state"); if (c) c.textContent = "deleted"; }
      refreshSoon();
    });
    src.addEventListener("job", function (m) { applyJob(m.data); });
    src.addEventListener("lagged", refreshSoon);
  }

  // On a phone a table's rows stack and its header is hidden, so every
  // cell is labelled with its column's heading (shown by the CSS), in rows
  // that are there at load and in rows the event stream adds later.
  function label(root) {
    var tables = (root.querySelectorAll ? root : document).querySelectorAll("table");
    if (root.tagName === "TABLE") tables = [root];
    for (var i = 0; i < tables.length; i++) {
      var heads = tables[i].querySelectorAll("thead th");
      if (!heads.length) continue;
      var rows = tables[i].querySelectorAll("tbody tr");
      for (var r = 0; r < rows.length; r++) {
        var cells = rows[r].children;
        for (var c = 0; c < cells.length && c < heads.length; c++) {
          if (!cells[c].hasAttribute("data-label")) cells[c].setAttribute("data-label", heads[c].textContent.trim());
        }
      }
    }
  }

  // A console marked data-follow is read again every 2 s while the page
  // is shown; it stays scrolled to the bottom if it was there.
  function followConsole(pre) {
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(pre.dataset.follow, { credentials: "same-origin" })
        .then(function (resp) {
          if (resp.status === 401) { window.location.assign("/ui/login"); return null; }
          return resp.ok ? resp.text() : null;
        })
        .then(function (text) {
          if (text === null || text === pre.textContent) return;
          var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          pre.textContent = text;
          if (atEnd) pre.scrollTop = pre.scrollHeight;
        })
        .catch(function () {})
        .then(function () { busy = false; });
    }, 2000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    label(document);
    var consoles = document.querySelectorAll("pre[data-follow]");
    for (var k = 0; k < consoles.length; k++) followConsole(consoles[k]);
    new MutationObserver(function (changes) {
      for (var i = 0; i < changes.length; i++) {
        var t = changes[i].target.closest ? changes[i].target.closest("table") : null;
        if (t) label(t);
      }
    }).observe(document.body, { childList: true, subtree: true });
    var tables = document.querySelectorAll("[data-events]");
    for (var i = 0; i < tables.length; i++) follow(tables[i]);
  });
})();
