// The device grant's page (templates/device/grant.html): every interval, ask the vault to
// poll the provider (POST with the page's CSRF token; the vault polls on the server and
// answers the grant's status as JSON). Once the grant has ended, load the page again: it
// redirects to the new connection, or says why the grant ended.
// A static file because the Content-Security-Policy allows no inline script.
(function () {
  var box = document.getElementById("device-grant");
  var status = document.getElementById("device-status");
  if (!box || !window.fetch) {
    return;
  }
  var pollUrl = box.getAttribute("data-poll-url");
  var token = box.getAttribute("data-csrf-token");
  var interval = Number(box.getAttribute("data-interval")) || 5;

  function schedule(seconds) {
    window.setTimeout(ask, Math.max(1, seconds) * 1000);
  }

  function ask() {
    fetch(pollUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": token, "Accept": "application/json" },
    }).then(function (response) {
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      return response.json();
    }).then(function (answer) {
      if (answer.status !== "pending") {
        window.location.assign(answer.location);
        return;
      }
      if (answer.message && status) {
        status.textContent = answer.message;
      }
      interval = answer.interval || interval;
      schedule(interval);
    }).catch(function () {
      if (status) {
        status.textContent = "The vault could not be asked just now; trying again.";
      }
      schedule(interval * 2);
    });
  }

  schedule(interval);
})();
