// Small progressive enhancement: every page works without it. A form with data-confirm asks
// before it posts (approve, reject), and any submitted form disables its button so a double tap
// on a phone does not post twice.
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
    return;
  }
  for (const button of form.querySelectorAll("button[type=submit]")) {
    setTimeout(() => { button.disabled = true; }, 0);
  }
});
