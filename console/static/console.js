// The console's only script (CSP: no inline script). Progressive enhancement: every form
// works without it.
(function () {
  "use strict";

  // Mark the guidance field required when the chosen option needs guidance.
  function syncGuidance(form) {
    var chosen = form.querySelector('input[name="decision"]:checked');
    var needs = !!(chosen && chosen.dataset.requiresGuidance === "true");
    form.classList.toggle("decide--needs-guidance", needs);
    var textarea = form.querySelector('textarea[name="guidance"]');
    if (textarea) textarea.setAttribute("aria-required", needs ? "true" : "false");
  }
  function syncAll(root) {
    (root || document).querySelectorAll("form.decide").forEach(syncGuidance);
  }
  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches('form.decide input[name="decision"]')) {
      syncGuidance(event.target.form);
    }
  });
  document.addEventListener("DOMContentLoaded", function () { syncAll(document); });

  // After the resolve form swaps its card (or a folded card opens in place), put focus where
  // the founder's eyes should go: the first error, else the notice, else the card itself.
  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail && event.detail.target;
    if (!target || !target.id || target.id.indexOf("escalation-") !== 0) return;
    var card = document.getElementById(target.id);
    if (!card) return;
    syncAll(card);
    // A card refreshed by the page itself (a live update of a card opened in place) leaves the
    // focus where the founder has it; a card opened or sent from within takes it.
    var source = event.detail.requestConfig && event.detail.requestConfig.elt;
    if (source === target) return;
    var invalid = card.querySelector('[aria-invalid="true"]');
    var focusable = invalid && (invalid.matches("fieldset") ? invalid.querySelector("input") : invalid);
    (focusable || card.querySelector(".notice") || card).focus();
  });

  // "Same as last time" fills the card's form with the previous decision (the founder still
  // sends it). Without JavaScript the link opens the card's page with that option chosen.
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a[data-fill-decision]");
    if (!link) return;
    var card = link.closest("article");
    var form = card && card.querySelector("form.decide");
    if (!form) return;
    event.preventDefault();
    var value = link.dataset.fillDecision;
    var radio = Array.prototype.find.call(form.querySelectorAll('input[name="decision"]'),
                                          function (input) { return input.value === value; });
    if (radio) { radio.checked = true; radio.focus(); }
    var text = form.querySelector('input[type="text"][name="decision"]');
    if (text) { text.value = value; text.focus(); }
    var guidance = form.querySelector('textarea[name="guidance"]');
    if (guidance && link.dataset.fillGuidance) guidance.value = link.dataset.fillGuidance;
    syncGuidance(form);
  });

  // Live updates: never insert a card or a timeline line twice (a reconnect may replay an
  // event that the page already showed).
  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    var detail = event.detail;
    var fragment = detail && detail.fragment;
    if (!fragment || !fragment.querySelectorAll) return;
    fragment.querySelectorAll("article[id], li[id]").forEach(function (node) {
      var existing = document.getElementById(node.id);
      if (existing && existing !== detail.target && (detail.swapSpec || {}).swapStyle !== "outerHTML") {
        node.remove();
      }
    });
  });
  // The founder's own swap already shows what the live frame of the same change carries:
  // keep the card (its notice and the focus on it) rather than replacing it by an
  // identical one without the notice (in the inbox, on the job page, in a second tab the
  // card that was not acted on still flips).
  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    var detail = event.detail || {};
    var target = detail.target;
    if (!target || !target.matches || !target.matches("article.card")) return;
    if (target.querySelector(".htmx-request")) {  // the founder's own post is in flight: its answer comes next
      detail.shouldSwap = false;
      return;
    }
    var fragment = detail.fragment;
    var incoming = fragment && (fragment.id === target.id ? fragment
      : fragment.querySelector && fragment.querySelector('[id="' + target.id + '"]'));
    if (!incoming) return;
    var sameStatus = incoming.getAttribute("data-status") === target.getAttribute("data-status");
    if (target.querySelector(".notice") && sameStatus) {
      detail.shouldSwap = false;
      return;
    }
    // In the one-line view a card the founder opened stays open: fetch it whole instead of
    // folding it back to the incoming line.
    if (incoming.getAttribute("data-view") === "compact" && target.getAttribute("data-view") !== "compact") {
      detail.shouldSwap = false;
      var opener = incoming.querySelector("a[data-opens-card]");
      if (opener && window.htmx) {
        htmx.ajax("GET", opener.getAttribute("hx-get"), {target: target, swap: "outerHTML"});
      }
    }
  });
  document.addEventListener("htmx:oobAfterSwap", function () {
    var empty = document.getElementById("pending-empty");
    var list = document.getElementById("pending-cards");
    if (empty && list) empty.hidden = list.children.length > 0;
    var count = document.getElementById("pending-count");
    if (count && document.body.hasAttribute("data-count-in-title")) {
      // "(3) Inbox · Console": the tab says how many questions wait, live.
      var n = parseInt(count.textContent, 10) || 0;
      document.title = document.title.replace(/^\(\d+\) /, "");
      if (n > 0) document.title = "(" + n + ") " + document.title;
    }
    var decidedEmpty = document.getElementById("decided-empty");
    var decided = document.getElementById("decided-cards");
    if (decidedEmpty && decided) decidedEmpty.hidden = decided.children.length > 0;
    syncAll(document);
  });

  // Moving through many questions from the keyboard: j the next card, k the previous one,
  // o (or Enter on a folded card) opens it: a folded card unfolds in place, an open one
  // puts the focus on its first choice. Never while typing, never with a modifier key.
  function cardsInOrder() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-keyboard-cards] > article.card"));
  }
  function openCard(card) {
    var opener = card.querySelector("a[data-opens-card]");
    if (opener) { opener.click(); return; }
    var first = card.querySelector("form.decide input:not([type=hidden]), form.decide textarea");
    if (first) first.focus();
  }
  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
    var typing = event.target.closest && event.target.closest("input, textarea, select, [contenteditable]");
    if (typing) return;
    var cards = cardsInOrder();
    if (!cards.length) return;
    var current = event.target.closest && event.target.closest("article.card");
    var index = cards.indexOf(current);
    if (event.key === "j" || event.key === "k") {
      var next = event.key === "j" ? (index < 0 ? 0 : Math.min(index + 1, cards.length - 1))
                                   : (index < 0 ? 0 : Math.max(index - 1, 0));
      event.preventDefault();
      cards[next].focus({preventScroll: true});
      cards[next].scrollIntoView({block: "nearest"});
    } else if ((event.key === "o" || (event.key === "Enter" && event.target === current)) && current) {
      event.preventDefault();
      openCard(current);
    }
  });
  // Resume a dropped stream where it stopped, not where the page began.
  document.addEventListener("htmx:sseMessage", function (event) {
    var id = event.detail && event.detail.lastEventId;
    var source = event.target && event.target.closest("[sse-connect]");
    if (!id || !source) return;
    var url = new URL(source.getAttribute("sse-connect"), window.location.href);
    url.searchParams.set("after", id);
    source.setAttribute("sse-connect", url.pathname + url.search);
  });
})();
