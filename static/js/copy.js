// "Copy" buttons: <button data-copy-from="ID"> copies the value of the element with that id.
// A static file because the Content-Security-Policy allows no inline script.
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy-from]");
  if (!button) {
    return;
  }
  var field = document.getElementById(button.getAttribute("data-copy-from"));
  if (!field) {
    return;
  }
  var done = function () {
    button.textContent = button.getAttribute("data-copied-text") || "Copied";
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(done, function () {
      field.select();
    });
  } else {
    field.select();
    if (document.execCommand("copy")) {
      done();
    }
  }
});
