// Typeset the math that pymdownx.arithmatex (generic mode) wrapped: \( ... \) in a span, \[ ... \] in a div.
// KaTeX comes bundled with the site (assets/katex/); a formula KaTeX rejects is reported on the console
// (the browser test fails on any console error) and left as it was.
function typesetMath(root) {
  root.querySelectorAll(".arithmatex").forEach(function (element) {
    if (element.dataset.typeset) {
      return;
    }
    const display = element.tagName === "DIV";
    let tex = element.textContent.trim();
    tex = display ? tex.replace(/^\\\[/, "").replace(/\\\]$/, "") : tex.replace(/^\\\(/, "").replace(/\\\)$/, "");
    try {
      katex.render(tex, element, { displayMode: display, throwOnError: true });
      element.dataset.typeset = "yes";
    } catch (error) {
      console.error("KaTeX could not typeset", JSON.stringify(tex), String(error));
    }
  });
}

// Headings' math reaches the table of contents and the nav as plain text, \( ... \): typeset it there too.
function typesetNavigation(root) {
  root.querySelectorAll(".md-nav__link, .md-nav__link .md-ellipsis").forEach(function (element) {
    if (element.children.length || !element.textContent.includes("\\(")) {
      return;
    }
    const parts = element.textContent.split(/\\\((.+?)\\\)/);
    element.textContent = "";
    parts.forEach(function (part, index) {
      const span = document.createElement("span");
      if (index % 2) {
        try {
          katex.render(part, span, { throwOnError: true });
        } catch (error) {
          console.error("KaTeX could not typeset", JSON.stringify(part), String(error));
          span.textContent = part;
        }
      } else {
        span.textContent = part;
      }
      element.appendChild(span);
    });
  });
}

function typesetAll(root) {
  typesetMath(root);
  typesetNavigation(root);
}

if (typeof document$ !== "undefined") {
  document$.subscribe(function (page) { typesetAll(page.body || document.body); });
} else {
  document.addEventListener("DOMContentLoaded", function () { typesetAll(document.body); });
}
