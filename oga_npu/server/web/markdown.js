/* Markdown to DOM nodes for the oga-npu chat page.

   Everything is built with document.createElement and text nodes: HTML in a model's answer
   is shown as text, never parsed or run (no HTML parsing anywhere). It covers what chat models
   write: paragraphs, headings, lists (nested by indent), block quotes, fenced code (with a
   Copy button), tables, rules, and inline code, bold, italic, strikethrough and links (http,
   https and mailto only). An unclosed fence (an answer still streaming) is a code block up to
   the end. window.ogaMarkdown.render(text) returns a DocumentFragment. */
"use strict";

(function (global) {
  const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$/;
  const HEADING = /^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE = /^ {0,3}> ?(.*)$/;
  const ITEM = /^( *)([-*+]|\d{1,9}[.)])([ \t]+|$)(.*)$/;
  const TABLE_SEP = /^ *\|? *:?-+:? *(\| *:?-+:? *)*\|? *$/;
  const SAFE_SCHEMES = ["http:", "https:", "mailto:"];

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function render(text) {
    const frag = document.createDocumentFragment();
    blocks(String(text).replace(/\r\n?/g, "\n").split("\n"), frag);
    return frag;
  }

  function leading(line) {
    return line.length - line.replace(/^ +/, "").length;
  }

  function closesFence(line, fence) {
    const t = line.trim();
    return t.length >= fence.length && t[0] === fence[0] && /^(`+|~+)$/.test(t);
  }

  function isTableStart(lines, i) {
    if (i + 1 >= lines.length || !lines[i].includes("|")) return false;
    const sep = lines[i + 1];
    return TABLE_SEP.test(sep) && sep.includes("-") && (sep.includes("|") || lines[i].trim().startsWith("|"))
      && cells(sep).length === cells(lines[i]).length;
  }

  function startsBlock(lines, i) {
    const l = lines[i];
    return FENCE.test(l) || HEADING.test(l) || RULE.test(l) || QUOTE.test(l) || ITEM.test(l) || isTableStart(lines, i);
  }

  function blocks(lines, parent) {
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if (!line.trim()) {
        i++;
      } else if ((m = FENCE.exec(line))) {
        const body = [];
        i++;
        while (i < lines.length && !closesFence(lines[i], m[1])) body.push(lines[i++]);
        i++;   // the closing fence (or past the end)
        parent.appendChild(codeBlock(body.join("\n"), m[2]));
      } else if ((m = HEADING.exec(line))) {
        const h = el("h" + Math.min(5, m[1].length + 2));   // h3..h5: an answer's headings stay small
        inline(m[2], h);
        parent.appendChild(h);
        i++;
      } else if (RULE.test(line)) {
        parent.appendChild(el("hr"));
        i++;
      } else if (QUOTE.test(line)) {
        const inner = [];
        while (i < lines.length && (m = QUOTE.exec(lines[i]))) { inner.push(m[1]); i++; }
        const q = el("blockquote");
        blocks(inner, q);
        parent.appendChild(q);
      } else if (ITEM.test(line)) {
        i = list(lines, i, parent);
      } else if (isTableStart(lines, i)) {
        i = table(lines, i, parent);
      } else {
        const para = [line];
        i++;
        while (i < lines.length && lines[i].trim() && !startsBlock(lines, i)) para.push(lines[i++]);
        const p = el("p");
        inline(para.map((l) => l.trim()).join("\n"), p);
        parent.appendChild(p);
      }
    }
  }

  function list(lines, i, parent) {
    const first = ITEM.exec(lines[i]);
    const indent = first[1].length;
    const ordered = /\d/.test(first[2]);
    const listEl = el(ordered ? "ol" : "ul");
    if (ordered && parseInt(first[2], 10) !== 1) listEl.start = parseInt(first[2], 10);
    while (i < lines.length) {
      const m = ITEM.exec(lines[i]);
      if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
      const contentIndent = m[1].length + m[2].length + Math.max(1, Math.min(m[3].length, 4));
      const body = [m[4]];
      i++;
      while (i < lines.length) {
        const l = lines[i];
        if (!l.trim()) {
          let j = i + 1;
          while (j < lines.length && !lines[j].trim()) j++;
          if (j < lines.length && leading(lines[j]) > indent) { body.push(""); i++; continue; }
          break;
        }
        const lead = leading(l);
        if (lead > indent) { body.push(l.slice(Math.min(lead, contentIndent))); i++; continue; }
        if (startsBlock(lines, i)) break;
        body.push(l.trim());   // a lazy continuation line
        i++;
      }
      const li = el("li");
      blocks(body, li);
      listEl.appendChild(li);
      // a blank line between two items of this list keeps them in one list
      let j = i;
      while (j < lines.length && !lines[j].trim()) j++;
      const next = j < lines.length ? ITEM.exec(lines[j]) : null;
      if (j > i && next && next[1].length === indent && /\d/.test(next[2]) === ordered) i = j;
    }
    parent.appendChild(listEl);
    return i;
  }

  function cells(line) {
    let t = line.trim();
    if (t.startsWith("|")) t = t.slice(1);
    if (t.endsWith("|") && !t.endsWith("\\|")) t = t.slice(0, -1);
    return t.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
  }

  function table(lines, i, parent) {
    const head = cells(lines[i]);
    const align = cells(lines[i + 1]).map((c) =>
      c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : "");
    const wrap = el("div", "table-wrap");
    const t = el("table");
    const row = (values, tag, parentEl) => {
      const tr = el("tr");
      head.forEach((_, k) => {
        const c = el(tag);
        if (align[k]) c.className = "align-" + align[k];
        inline(values[k] || "", c);
        tr.appendChild(c);
      });
      parentEl.appendChild(tr);
    };
    const thead = el("thead");
    row(head, "th", thead);
    const tbody = el("tbody");
    i += 2;
    while (i < lines.length && lines[i].trim() && lines[i].includes("|")) row(cells(lines[i++]), "td", tbody);
    t.append(thead, tbody);
    wrap.appendChild(t);
    parent.appendChild(wrap);
    return i;
  }

  function copyText(text, button) {
    const done = (ok) => {
      button.textContent = ok ? "Copied" : "Select and copy";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard && global.isSecureContext) {
      navigator.clipboard.writeText(text).then(() => done(true), () => done(false));
    } else {
      done(false);
    }
  }

  function codeBlock(code, lang) {
    const wrap = el("div", "code-block");
    const head = el("div", "code-head");
    head.appendChild(el("span", "code-lang", lang || "text"));
    const btn = el("button", "copy-code", "Copy");
    btn.type = "button";
    btn.addEventListener("click", () => copyText(code, btn));
    head.appendChild(btn);
    const pre = el("pre");
    const c = el("code", null, code);
    pre.appendChild(c);
    wrap.append(head, pre);
    return wrap;
  }

  function safeUrl(url) {
    try {
      const u = new URL(url, global.location.href);
      return SAFE_SCHEMES.includes(u.protocol) && /^(https?:|mailto:)/i.test(url) ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  function link(href, parent) {
    const a = el("a");
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer nofollow";
    parent.appendChild(a);
    return a;
  }

  const CODE = /(`+)([\s\S]*?[^`])\1(?!`)/y;
  const STRONG = /(\*\*|__)(?=\S)([\s\S]*?\S)\1/y;
  const EM = /(\*|_)(?=[^\s*_])([\s\S]*?[^\s*_]|[^\s*_])\1(?![*_])/y;
  const DEL = /~~(?=\S)([\s\S]*?\S)~~/y;
  const LINK = /\[([^\]\n]+)\]\(\s*<?([^\s<>()]+)>?(?:\s+"[^"\n]*")?\s*\)/y;
  const AUTOLINK = /https?:\/\/[^\s<>"'`]+/y;
  const WORD = /[\p{L}\p{N}]/u;

  function at(re, text, i) {
    re.lastIndex = i;
    return re.exec(text);
  }

  /* Inline markdown of `text` appended to `parent` as nodes. */
  function inline(text, parent) {
    let buf = "";
    const flush = () => {
      if (buf) parent.appendChild(document.createTextNode(buf));
      buf = "";
    };
    let i = 0;
    while (i < text.length) {
      const ch = text[i];
      const prev = i > 0 ? text[i - 1] : "";
      let m = null;
      if (ch === "\\" && i + 1 < text.length && /[!-/:-@[-`{-~]/.test(text[i + 1])) {
        buf += text[i + 1];
        i += 2;
        continue;
      }
      if (ch === "\n") {
        flush();
        parent.appendChild(el("br"));
        i++;
        continue;
      }
      if (ch === "`" && (m = at(CODE, text, i))) {
        flush();
        let code = m[2];
        if (code.length > 2 && code.startsWith(" ") && code.endsWith(" ")) code = code.slice(1, -1);
        parent.appendChild(el("code", null, code.replace(/\n/g, " ")));
      } else if ((ch === "*" || ch === "_") && !(ch === "_" && WORD.test(prev))
                 && ((m = at(STRONG, text, i)) || (m = at(EM, text, i)))
                 && !(ch === "_" && WORD.test(text[i + m[0].length] || ""))) {
        flush();
        const e = el(m[1].length === 2 ? "strong" : "em");
        inline(m[2], e);
        parent.appendChild(e);
      } else if (ch === "~" && (m = at(DEL, text, i))) {
        flush();
        const e = el("del");
        inline(m[1], e);
        parent.appendChild(e);
      } else if (ch === "[" && (m = at(LINK, text, i))) {
        flush();
        const href = safeUrl(m[2]);
        if (href) {
          inline(m[1], link(href, parent));
        } else {
          inline(m[1], parent);   // a link to anything but http(s)/mailto: its text only
        }
      } else if (ch === "h" && !WORD.test(prev) && (m = at(AUTOLINK, text, i))) {
        let url = m[0].replace(/[.,;:!?)\]]+$/, "");
        if (url.includes("(") && m[0][url.length] === ")") url += ")";
        m = [url];
        flush();
        const href = safeUrl(url);
        if (href) link(href, parent).textContent = url;
        else buf += url;
      } else {
        buf += ch;
        i++;
        continue;
      }
      i += m[0].length;
    }
    flush();
  }

  global.ogaMarkdown = { render };
})(window);
