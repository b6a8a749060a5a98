// orchwf dashboard: live refresh and confirmations. No inline scripts (the server's
// Content-Security-Policy forbids them), no dependencies, no build step.
(function () {
  "use strict";

  // An element with data-live="N" is re-fetched every N seconds: the element with the
  // same id in the fresh page replaces its content (HTML the server escaped already).
  // It stops when the fresh element is no longer live (e.g. the instance finished).
  function poll(el) {
    var seconds = Number(el.getAttribute("data-live")) || 5;
    setTimeout(function () {
      if (document.hidden) { poll(el); return; }
      fetch(window.location.href, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
        .then(function (text) {
          var fresh = new DOMParser().parseFromString(text, "text/html").getElementById(el.id);
          if (!fresh) { return; }
          var open = Array.prototype.map.call(el.querySelectorAll("details[open]"), function (d) {
            return d.id || d.querySelector("summary").textContent;
          });
          el.innerHTML = fresh.innerHTML;
          Array.prototype.forEach.call(el.querySelectorAll("details"), function (d) {
            if (open.indexOf(d.id || d.querySelector("summary").textContent) >= 0) { d.open = true; }
          });
          if (fresh.hasAttribute("data-live")) { poll(el); } else { el.removeAttribute("data-live"); }
        })
        .catch(function () { poll(el); });
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-live][id]"), poll);
    var target = window.location.hash && document.getElementById(window.location.hash.slice(1));
    if (target && target.tagName === "DETAILS") { target.open = true; }
  });

  // Open a step's details when its node in the graph is clicked.
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a[href^='#step-']");
    var target = link && document.getElementById(link.getAttribute("href").slice(1));
    if (target && target.tagName === "DETAILS") { target.open = true; }
  });

  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });
}());
