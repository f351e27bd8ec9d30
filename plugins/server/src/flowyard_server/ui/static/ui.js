// flowyard dashboard: every htmx request carries the session's CSRF token (X-CSRF-Token),
// read from <meta name="csrf-token"> (absent on the login page: nothing is added there).
"use strict";
document.addEventListener("htmx:configRequest", (event) => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (meta && meta.content) {
    event.detail.headers["X-CSRF-Token"] = meta.content;
  }
});
