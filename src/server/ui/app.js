// Portcullis recent decisions: the list comes from GET /v1/decisions, one decision from
// GET /v1/decisions/{id}. One file on purpose: the page is served embedded with a strict
// CSP and no build step or module loader, and its parts (list, filters, live polling, detail
// view, keyboard) share one small state and one element helper. Decision data is attacker-controlled (URLs, headers, token claims),
// so it only ever enters the page as text nodes and attribute values, never as HTML; the
// page's Content-Security-Policy makes the browser refuse HTML strings as well.
'use strict';

(() => {
  const API = '/v1/decisions';
  const POLL_MS = 1500;
  // Every this many polls, list again instead of asking only for newer decisions, so that
  // decisions evicted from the store leave the page too.
  const FULL_LIST_EVERY = 20;
  const LIMIT = 100;
  const FILTERS = ['service', 'outcome', 'status', 'subject', 'since', 'q', 'shadow'];
  const STAGES = [
    { step: 'baseUrl', title: 'Base URL match', check: 'base URL' },
    { step: 'token', title: 'Token checks', check: 'bearer token' },
    { step: 'operation', title: 'Operation match', check: 'operation' },
    { step: 'rule', title: 'Access rules', check: 'rule' },
  ];

  // When Portcullis is reachable from elsewhere, the decisions API needs the admin token;
  // it is asked for once and kept for this browser tab only.
  const TOKEN_KEY = 'portcullis-admin-token';
  function apiHeaders() {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    return headers;
  }
  function askForToken() {
    const token = window.prompt('This Portcullis needs the admin token to show decisions:');
    if (token) sessionStorage.setItem(TOKEN_KEY, token.trim());
    else sessionStorage.removeItem(TOKEN_KEY);
    return Boolean(token);
  }

  const $ = (id) => document.getElementById(id);
  const listView = $('list-view');
  const detailView = $('detail-view');
  const rowsEl = $('decision-rows');
  const form = $('filters');
  const liveBox = $('f-live');
  const listMessage = $('list-message');
  const liveStatus = $('live-status');
  const detailHeading = $('detail-heading');
  const detailBody = $('detail-body');
  const backLink = $('back-link');

  const state = {
    view: null,
    // What the table shows, newest first: [{id, time}]; rows by id.
    items: [],
    rows: new Map(),
    query: null,
    polls: 0,
    timer: 0,
    request: null,
    detailId: null,
    listUrl: '/ui/',
    openedFromList: false,
    lastOpened: null,
  };

  // ---- DOM building: text only ----

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'class') node.className = value;
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    add(node, children);
    return node;
  }

  function add(node, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) add(node, child);
      else node.append(child instanceof Node ? child : String(child));
    }
  }

  const muted = (text) => el('span', { class: 'muted' }, text);
  const hidden = (text) => el('span', { class: 'visually-hidden' }, text);
  // A table cell whose content is one block, so that narrow screens can lay it out beside
  // its label.
  const cell = (attrs, ...content) => el('td', attrs, el('div', { class: 'cell' }, content));

  function jsonText(value) {
    return value === null || value === undefined ? null : JSON.stringify(value);
  }

  function valueCell(value) {
    const text = jsonText(value);
    return text === null ? muted('—') : el('code', { class: 'value' }, text);
  }

  // A file path that may wrap after each `/`.
  function pathCode(path) {
    const parts = String(path).split('/');
    return el('code', { class: 'path' }, parts.map((part, i) => (i < parts.length - 1 ? [part + '/', el('wbr')] : part)));
  }

  function detailHref(id) {
    return '/ui/decisions/' + encodeURIComponent(id);
  }

  // "2026-11-22T01:24:05.239Z" → 01:24:05.239, with the date when it is not today (UTC).
  function timeEl(iso) {
    const text = String(iso || '');
    const [date, rest] = text.split('T');
    const clock = (rest || '').replace(/Z$/, '');
    const today = new Date().toISOString().slice(0, 10);
    return el('time', { datetime: text, title: text }, date === today ? clock : date + ' ' + clock);
  }

  function duration(micros) {
    if (typeof micros !== 'number') return '—';
    if (micros < 1000) return micros + ' µs';
    if (micros < 1e6) return (micros / 1000).toFixed(micros < 1e4 ? 2 : 1) + ' ms';
    return (micros / 1e6).toFixed(2) + ' s';
  }

  function subjectOf(decision) {
    const token = decision.token;
    if (!token) return null;
    if (token.sub) return token.sub;
    return token.clientId ? token.clientId + ' (client)' : null;
  }

  function outcomeBadge(outcome) {
    const allowed = outcome === 'allow';
    return el('span', { class: 'badge ' + (allowed ? 'badge-allow' : 'badge-deny') },
      el('span', { 'aria-hidden': 'true' }, allowed ? '✓ ' : '✗ '), outcome || '?');
  }

  // ---- navigation ----

  function navigate(url) {
    history.pushState(null, '', url);
    route();
  }

  function route() {
    const match = /^\/ui\/decisions\/([^/]+)\/?$/.exec(location.pathname);
    if (match) {
      let id;
      try { id = decodeURIComponent(match[1]); } catch { id = match[1]; }
      showDetail(id);
    } else {
      showList();
    }
  }

  document.addEventListener('click', (event) => {
    if (event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const link = event.target.closest('a[href]');
    const row = event.target.closest('#decision-rows tr');
    if (link && !row) {
      if (link.origin !== location.origin || !link.pathname.startsWith('/ui/')) return;
      if (link.hasAttribute('download') || (link.target && link.target !== '_self')) return;
      event.preventDefault();
      if (link.id === 'back-link' && state.openedFromList) history.back();
      else navigate(link.pathname + link.search);
      return;
    }
    if (link) event.preventDefault();
    // A click that selects text is for copying, not for opening.
    if (row && !String(window.getSelection())) openRow(row);
  });

  window.addEventListener('popstate', route);

  document.addEventListener('keydown', (event) => {
    if (event.defaultPrevented || event.metaKey || event.ctrlKey || event.altKey) return;
    const typing = event.target.closest('input, select, textarea, [contenteditable]');
    if (event.key === '/' && !typing && state.view === 'list') {
      event.preventDefault();
      $('f-q').focus();
    } else if (event.key === 'Escape' && state.view === 'detail' && !typing) {
      event.preventDefault();
      if (state.openedFromList) history.back();
      else navigate(state.listUrl);
    }
  });

  // ---- the list ----

  function filterParams() {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    return params;
  }

  function readFiltersFromUrl() {
    const params = new URLSearchParams(location.search);
    for (const name of FILTERS) form.elements[name].value = params.get(name) || '';
  }

  function setLive(text, kind) {
    liveStatus.textContent = text;
    liveStatus.className = 'live-status' + (kind ? ' live-' + kind : '');
  }

  function setListMessage(text, kind) {
    if (listMessage.textContent !== text) listMessage.textContent = text;
    listMessage.className = 'message' + (kind ? ' message-' + kind : '');
  }

  function markInvalid(target) {
    for (const name of FILTERS) {
      const input = form.elements[name];
      if (name === target) input.setAttribute('aria-invalid', 'true');
      else input.removeAttribute('aria-invalid');
    }
  }

  function showList() {
    const fromDetail = state.view === 'detail';
    state.view = 'list';
    state.openedFromList = false;
    state.detailId = null;
    detailView.hidden = true;
    listView.hidden = false;
    document.title = 'Recent decisions · Portcullis';
    readFiltersFromUrl();
    state.listUrl = location.pathname + location.search;
    refreshList(true);
    refreshOverview();
    if (fromDetail && state.lastOpened) {
      const row = state.rows.get(state.lastOpened);
      if (row && row.isConnected) focusRow(row);
    }
  }

  async function refreshList(full) {
    clearTimeout(state.timer);
    const params = filterParams();
    const query = params.toString();
    const incremental = !full && query === state.query && state.items.length > 0
      && state.polls % FULL_LIST_EVERY !== 0;
    if (incremental) params.set('since', state.items[0].time);
    params.set('limit', String(LIMIT));
    if (state.request) state.request.abort();
    const request = new AbortController();
    state.request = request;
    state.polls += 1;
    let response;
    let data = null;
    try {
      response = await fetch(API + '?' + params, {
        signal: request.signal,
        cache: 'no-store',
        headers: apiHeaders(),
      });
      if (response.status === 401 && askForToken()) {
        response = await fetch(API + '?' + params, {
          signal: request.signal,
          cache: 'no-store',
          headers: apiHeaders(),
        });
      }
      data = await response.json().catch(() => null);
    } catch (error) {
      if (request.signal.aborted) return;
      setLive('Offline: retrying', 'error');
      setListMessage('Cannot reach Portcullis (' + error.message + '); retrying.', 'error');
      schedulePoll();
      return;
    }
    if (state.request !== request) return;
    state.request = null;
    if (state.view !== 'list') return;
    if (!response.ok || !data || !Array.isArray(data.decisions)) {
      const message = data && data.message
        ? data.message
        : 'The decisions API answered ' + response.status + '.';
      markInvalid(data && data.target);
      setListMessage(message, 'error');
      setLive('Error', 'error');
      schedulePoll();
      return;
    }
    markInvalid(null);
    const sameQuery = query === state.query;
    state.query = query;
    let items = data.decisions;
    // A full page of newer decisions may hide a gap: list again instead of merging.
    if (incremental && items.length >= LIMIT) {
      refreshList(true);
      return;
    }
    if (incremental) {
      const fresh = items.filter((d) => !state.rows.has(d.id));
      items = fresh.concat(state.items).slice(0, LIMIT);
    }
    renderRows(items, sameQuery);
    schedulePoll();
  }

  function schedulePoll() {
    clearTimeout(state.timer);
    if (state.view !== 'list') return;
    if (!liveBox.checked) {
      setLive('Paused');
      return;
    }
    if (document.hidden) return;
    setLive('Live · updated ' + new Date().toISOString().slice(11, 19) + ' UTC', 'on');
    state.timer = setTimeout(() => refreshList(false), POLL_MS);
  }

  function renderRows(decisions, markNew) {
    const wanted = [];
    for (const d of decisions) {
      let row = state.rows.get(d.id);
      if (!row) {
        row = buildRow(d);
        if (markNew) {
          row.classList.add('is-new');
          row.addEventListener('animationend', () => row.classList.remove('is-new'), { once: true });
        }
        state.rows.set(d.id, row);
      }
      wanted.push(row);
    }
    state.items = decisions.map((d) => ({ id: d.id, time: d.time }));
    // Reconcile in place, so that the focused row keeps its focus while rows arrive.
    const keep = new Set(wanted);
    for (const row of Array.from(rowsEl.children)) {
      if (!keep.has(row)) {
        row.remove();
        state.rows.delete(row.dataset.id);
      }
    }
    wanted.forEach((row, i) => {
      const here = rowsEl.children[i] || null;
      if (here !== row) rowsEl.insertBefore(row, here);
    });
    if (!rowsEl.querySelector('tr[tabindex="0"]') && wanted.length) wanted[0].tabIndex = 0;

    const filtered = FILTERS.some((name) => form.elements[name].value.trim());
    if (!wanted.length) {
      setListMessage(filtered
        ? 'No recent decision matches these filters.'
        : 'No decisions yet: they appear here as gateways ask Portcullis.', 'empty');
    } else if (wanted.length >= LIMIT) {
      setListMessage('Showing the newest ' + LIMIT + ' decisions' + (filtered ? ' that match' : '')
        + '; narrow the filters to find older ones.');
    } else {
      setListMessage(wanted.length + (wanted.length === 1 ? ' decision' : ' decisions')
        + (filtered ? ' match' : '') + ', newest first.');
    }
  }

  function buildRow(d) {
    const request = d.request || {};
    const subject = subjectOf(d);
    const row = el('tr', {
      class: 'row-' + (d.outcome === 'allow' ? 'allow' : 'deny'),
      'data-id': d.id,
      tabindex: '-1',
    },
    cell({ class: 'col-time', 'data-label': 'Time' },
      el('a', { href: detailHref(d.id), tabindex: '-1', title: 'Decision ' + d.id }, timeEl(d.time))),
    cell({ class: 'col-method', 'data-label': 'Method' }, request.method || ''),
    cell({ class: 'col-url', 'data-label': 'URL' }, el('span', { class: 'url', title: request.url || '' }, request.url || '')),
    cell({ 'data-label': 'Service' }, d.service || muted('—')),
    cell({ 'data-label': 'Operation' }, d.operation || muted('—')),
    cell({ 'data-label': 'Outcome' }, outcomeBadge(d.outcome),
      d.shadow ? el('span', {
        class: 'badge badge-shadow',
        title: 'The shadow policy set decided ' + d.shadow.outcome + ' (' + d.shadow.status + ')',
      }, 'shadow: ' + d.shadow.outcome) : null),
    cell({ class: 'num', 'data-label': 'Status' }, String(d.status)),
    cell({ 'data-label': 'Subject' }, subject || muted('—')),
    cell({ class: 'num', 'data-label': 'Duration' }, duration(d.durationMicros)));
    row.dataset.outcome = d.outcome;
    return row;
  }

  function focusRow(row) {
    for (const other of rowsEl.querySelectorAll('tr[tabindex="0"]')) other.tabIndex = -1;
    row.tabIndex = 0;
    row.focus();
  }

  function openRow(row) {
    state.lastOpened = row.dataset.id;
    state.openedFromList = true;
    navigate(detailHref(row.dataset.id));
  }

  rowsEl.addEventListener('focusin', (event) => {
    const row = event.target.closest('tr');
    if (row && row.tabIndex !== 0) focusRow(row);
  });

  rowsEl.addEventListener('keydown', (event) => {
    const row = event.target.closest('tr');
    if (!row || event.altKey || event.ctrlKey || event.metaKey) return;
    const rows = Array.from(rowsEl.children);
    const at = rows.indexOf(row);
    let next = null;
    switch (event.key) {
      case 'Enter':
      case ' ':
        event.preventDefault();
        openRow(row);
        return;
      case 'ArrowDown': next = rows[at + 1]; break;
      case 'ArrowUp': next = rows[at - 1]; break;
      case 'PageDown': next = rows[Math.min(at + 10, rows.length - 1)]; break;
      case 'PageUp': next = rows[Math.max(at - 10, 0)]; break;
      case 'Home': next = rows[0]; break;
      case 'End': next = rows[rows.length - 1]; break;
      default: return;
    }
    event.preventDefault();
    if (next) focusRow(next);
  });

  let typingTimer = 0;
  function filtersChanged() {
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => {
      const params = filterParams().toString();
      const url = '/ui/' + (params ? '?' + params : '');
      if (url !== location.pathname + location.search) history.replaceState(null, '', url);
      state.listUrl = url;
      refreshList(true);
    }, 250);
  }

  form.addEventListener('input', filtersChanged);
  form.addEventListener('change', (event) => {
    if (event.target === liveBox) {
      if (liveBox.checked) refreshList(false);
      else schedulePoll();
    } else {
      filtersChanged();
    }
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    filtersChanged();
  });
  // `reset` fires before the fields are cleared.
  form.addEventListener('reset', () => setTimeout(() => {
    liveBox.checked = true;
    filtersChanged();
  }, 0));

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && state.view === 'list') refreshList(false);
  });

  // ---- one decision ----

  async function showDetail(id) {
    clearTimeout(state.timer);
    if (state.request) state.request.abort();
    state.view = 'detail';
    state.detailId = id;
    setLive('');
    listView.hidden = true;
    detailView.hidden = false;
    backLink.href = state.listUrl;
    detailHeading.textContent = 'Decision ' + id;
    document.title = 'Decision ' + id + ' · Portcullis';
    detailBody.replaceChildren(el('p', { class: 'message' }, 'Loading…'));
    detailHeading.focus();
    window.scrollTo(0, 0);

    let response;
    let data = null;
    try {
      response = await fetch(API + '/' + encodeURIComponent(id), {
        cache: 'no-store',
        headers: apiHeaders(),
      });
      if (response.status === 401 && askForToken()) {
        response = await fetch(API + '/' + encodeURIComponent(id), {
          cache: 'no-store',
          headers: apiHeaders(),
        });
      }
      data = await response.json().catch(() => null);
    } catch (error) {
      if (state.detailId === id) {
        detailBody.replaceChildren(el('p', { class: 'notice notice-error', role: 'alert' },
          'Cannot reach Portcullis (' + error.message + '). Reload to try again.'));
      }
      return;
    }
    if (state.view !== 'detail' || state.detailId !== id) return;
    if (response.status === 404) {
      detailHeading.textContent = 'Decision not found';
      document.title = 'Decision not found · Portcullis';
      detailBody.replaceChildren(el('div', { class: 'notice notice-error', role: 'alert' },
        el('p', null, 'Not found (unknown or evicted): there is no decision ', el('code', null, id),
          ' in the recent-decisions store. The id may be mistyped, or the decision was evicted: the store keeps only the most recent decisions, and a restart empties it.'),
        el('p', null, 'The audit log keeps every decision by id.')));
      return;
    }
    if (!response.ok || !data) {
      detailBody.replaceChildren(el('p', { class: 'notice notice-error', role: 'alert' },
        (data && data.message) || 'The decisions API answered ' + response.status + '.'));
      return;
    }
    renderDetail(data);
  }

  function renderDetail(d) {
    const denied = d.outcome !== 'allow';
    const body = d.body || null;
    detailHeading.replaceChildren(
      denied ? 'Denied ' : 'Allowed ', el('span', { class: 'status-code' }, String(d.status)),
      body && body.code ? ' ' + body.code : '');
    detailHeading.className = denied ? 'heading-deny' : 'heading-allow';
    document.title = (denied ? 'Denied ' : 'Allowed ') + d.status + ' · ' + d.id + ' · Portcullis';
    detailBody.replaceChildren(
      el('p', { class: 'decision-id' }, 'Decision ', el('code', null, d.id)),
      whySection(d),
      requestSection(d),
      pipelineSection(d),
      d.shadow ? shadowSection(d) : null,
      responseSection(d),
      tokenSection(d),
      el('details', { class: 'raw' },
        el('summary', null, 'The decision as JSON'),
        el('pre', null, JSON.stringify(d, null, 2))));
  }

  function section(id, title, ...content) {
    return el('section', { class: 'panel', 'aria-labelledby': id },
      el('h2', { id }, title), content);
  }

  function definitionList(pairs) {
    const list = el('dl', { class: 'pairs' });
    for (const [term, value] of pairs) {
      if (value === undefined) continue;
      list.append(el('dt', null, term),
        el('dd', null, value === null || value === '' ? muted('—') : value));
    }
    return list;
  }

  function stageTitle(step) {
    const stage = STAGES.find((s) => s.step === step);
    return stage ? stage.title : step;
  }

  function checkName(step) {
    const stage = STAGES.find((s) => s.step === step);
    return stage ? stage.check : step;
  }

  // The entries nested under the composite rule at `index` (any, all, not).
  function nestedUnder(trace, index) {
    const depth = trace[index].depth || 0;
    const nested = [];
    for (let i = index + 1; i < trace.length; i++) {
      const t = trace[i];
      if (t.step !== 'rule' || (t.depth || 0) <= depth) break;
      nested.push(t);
    }
    return nested;
  }

  function nestedList(entries, base) {
    return el('ul', { class: 'nested' }, entries.map((t) => {
      const item = el('li', { class: t.result ? 'pass' : 'fail' },
        el('span', { class: 'badge ' + (t.result ? 'badge-allow' : 'badge-deny') }, t.result ? '✓ pass' : '✗ fail'), ' ',
        el('span', { class: 'rule-name' }, t.rule || ''),
        t.attribute ? [' · ', el('code', null, t.attribute), ' ', el('code', null, t.operator || '')] : null,
        t.expected !== null && t.expected !== undefined ? [' · expected ', valueCell(t.expected)] : null,
        t.actual !== null && t.actual !== undefined ? [' · actual ', valueCell(t.actual)] : null,
        t.detail ? ' · ' + t.detail : null);
      item.style.setProperty('--depth', String(Math.min((t.depth || 0) - base - 1, 8)));
      return item;
    }));
  }

  function whySection(d) {
    const trace = d.trace || [];
    const details = (d.body && d.body.details) || [];
    if (d.outcome === 'allow') {
      const rules = trace.filter((t) => t.step === 'rule' && !t.depth).length;
      return section('why-heading', 'Why it was allowed',
        el('p', null, 'Every check passed: the base URL, the token, the operation ',
          el('code', null, d.operation || '—'), ' and ',
          rules === 0 ? 'its access rules (it has none).' : rules === 1 ? 'its access rule.' : 'all ' + rules + ' of its access rules.'));
    }
    const failures = [];
    trace.forEach((t, index) => {
      if (!t.decisive) return;
      const nested = nestedUnder(trace, index);
      const composite = nested.length > 0 && t.actual == null;
      failures.push(el('div', { class: 'failure' },
        el('p', { class: 'failure-title' },
          el('span', { class: 'stage' }, stageTitle(t.step)), ' ',
          t.rule ? el('strong', { class: 'rule-name' }, t.rule) : null,
          t.result ? null : el('span', { class: 'badge badge-deny' }, '✗ failed')),
        definitionList([
          ['Attribute', composite ? undefined : t.attribute ? el('code', null, t.attribute) : null],
          ['Operator', t.operator ? el('code', null, t.operator) : null],
          ['Expected', composite ? undefined : el('span', { class: 'expected' }, valueCell(t.expected))],
          ['Actual', composite ? undefined : el('span', { class: 'actual' }, valueCell(t.actual))],
          ['Detail', t.detail === undefined ? undefined : t.detail],
          ['Policy', t.location === undefined ? undefined : pathCode(t.location)],
        ]),
        nested.length ? [el('p', { class: 'nested-title' }, 'Its conditions:'), nestedList(nested, t.depth || 0)] : null));
    });
    const alsoFailed = trace.filter((t) => t.step === 'rule' && !t.depth && !t.result && !t.decisive);
    return section('why-heading', 'Why it was denied',
      failures.length ? failures : el('p', null, (d.body && d.body.message) || d.audit || 'No check is marked decisive.'),
      alsoFailed.length
        ? el('p', null, 'Also not satisfied: ', alsoFailed.map((t, i) => [i ? ', ' : '', el('strong', null, t.rule || t.operator)]), ' (see the pipeline below).')
        : null,
      details.length
        ? [el('h3', null, 'What the client was told'),
          el('ul', { class: 'details' }, details.map((x) => el('li', null,
            el('code', null, x.code || ''), x.target ? [' on ', el('code', null, x.target)] : null,
            ': ', x.message || '')))]
        : null);
  }

  // The trace id, linked to the trace UI when the server names one (`--trace-ui-url`).
  function traceEl(d) {
    if (!d.traceId) return undefined;
    const id = el('code', { class: 'trace-id' }, d.traceId);
    const span = d.spanId ? el('span', { class: 'muted' }, ' span ', el('code', null, d.spanId)) : null;
    const template = overviewState.traceUiUrl;
    if (!template || !/^https?:/.test(template)) return el('span', null, id, span);
    const href = template.split('{traceId}').join(encodeURIComponent(d.traceId));
    return el('span', null,
      el('a', { href, class: 'trace-link', target: '_blank', rel: 'noopener noreferrer' }, id),
      span);
  }

  function requestSection(d) {
    const request = d.request || {};
    return section('request-heading', 'Request',
      definitionList([
        ['Time', timeEl(d.time)],
        ['Duration', duration(d.durationMicros)],
        ['Method', request.method || null],
        ['URL', request.url ? el('code', { class: 'url-full' }, request.url) : null],
        ['Client', request.client || null],
        ['Service', d.service || null],
        ['Operation', d.operation || null],
        ['Policy revision', d.policyRevision ? el('code', null, d.policyRevision) : null],
        ['Trace', traceEl(d)],
        ['Upstream answered', d.upstreamStatus ? String(d.upstreamStatus) : undefined],
        ['Audit', d.audit || null],
      ]));
  }

  function pipelineSection(d) {
    const trace = d.trace || [];
    const table = el('table', { class: 'trace' },
      el('caption', { class: 'visually-hidden' }, 'Every check, in the order it was evaluated'),
      el('thead', null, el('tr', null,
        ['Check', 'Attribute', 'Operator', 'Expected', 'Actual', 'Result', 'Policy']
          .map((h) => el('th', { scope: 'col' }, h)))));
    let reachedEnd = true;
    STAGES.forEach((stage, index) => {
      const entries = trace.filter((t) => t.step === stage.step);
      const failed = entries.some((t) => !t.result && !t.depth);
      const group = el('tbody', { class: 'stage' });
      let verdict = failed ? 'fail' : 'pass';
      if (!entries.length) verdict = !reachedEnd ? 'not reached' : stage.step === 'rule' ? 'no rules' : '';
      group.append(el('tr', { class: 'stage-row' },
        el('th', { scope: 'rowgroup', colspan: '7' },
          (index + 1) + '. ' + stage.title,
          verdict ? el('span', { class: 'stage-verdict verdict-' + verdict.replace(' ', '-') }, ' — ' + verdict) : null)));
      if (!entries.length) {
        let text;
        if (!reachedEnd) text = 'Not reached: the decision was made at an earlier step.';
        else if (stage.step === 'rule') text = 'The operation has no access rules.';
        else text = 'No check recorded.';
        group.append(el('tr', { class: 'empty' }, el('td', { colspan: '7' }, muted(text))));
      }
      for (const t of entries) group.append(traceRow(t));
      if (failed || (!entries.length && !reachedEnd)) reachedEnd = false;
      table.append(group);
    });
    return section('pipeline-heading', 'Pipeline',
      el('p', { class: 'hint' }, 'Each check in evaluation order; the decisive one is highlighted. Nested rules (under any, all, not) are indented.'),
      el('div', { class: 'table-wrap' }, table));
  }

  // The active and the shadow set's traces side by side, each as evaluated.
  function shadowSection(d) {
    const s = d.shadow;
    const verdict = (outcome, status, rule) =>
      [outcomeBadge(outcome), ' ', String(status), rule ? [' — decided by ', el('strong', { class: 'rule-name' }, rule)] : null];
    const decisive = (d.trace || []).find((t) => t.decisive);
    const column = (title, revision, trace, summary) => el('div', { class: 'shadow-column' },
      el('h3', null, title, ' ', el('code', { class: 'revision' }, revision || '')),
      el('p', null, summary),
      el('div', { class: 'table-wrap' }, el('table', { class: 'trace' },
        el('thead', null, el('tr', null,
          ['Check', 'Attribute', 'Operator', 'Expected', 'Actual', 'Result', 'Policy']
            .map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', null, (trace || []).map(traceRow)))));
    return section('shadow-heading', 'Shadow policy set',
      el('p', { class: 'hint' }, 'The shadow set decided this request differently; the answer was the active set\'s.'),
      el('div', { class: 'shadow-compare' },
        column('Active', d.policyRevision, d.trace,
          verdict(d.outcome, d.status, decisive ? (decisive.rule || decisive.attribute) : null)),
        column('Shadow', s.policyRevision, s.trace, verdict(s.outcome, s.status, s.rule))));
  }

  function traceRow(t) {
    const depth = Number(t.depth) || 0;
    const check = cell({ class: 'check', 'data-label': 'Check' },
      depth ? [el('span', { class: 'nest', 'aria-hidden': 'true' }, '└ '), hidden('nested level ' + depth + ': ')] : null,
      t.rule ? el('span', { class: 'rule-name' }, t.rule) : muted(checkName(t.step)),
      t.detail ? el('div', { class: 'detail' }, t.detail) : null);
    check.style.setProperty('--depth', String(Math.min(depth, 8)));
    const row = el('tr', {
      class: (t.result ? 'pass' : 'fail') + (t.decisive ? ' decisive' : ''),
      'data-step': t.step,
      'data-depth': String(depth),
    },
    check,
    cell({ 'data-label': 'Attribute' }, t.attribute ? el('code', null, t.attribute) : muted('—')),
    cell({ 'data-label': 'Operator' }, t.operator ? el('code', null, t.operator) : muted('—')),
    cell({ class: 'expected', 'data-label': 'Expected' }, valueCell(t.expected)),
    cell({ class: 'actual', 'data-label': 'Actual' }, valueCell(t.actual)),
    cell({ class: 'result', 'data-label': 'Result' },
      el('span', { class: 'badge ' + (t.result ? 'badge-allow' : 'badge-deny') },
        el('span', { 'aria-hidden': 'true' }, t.result ? '✓ ' : '✗ '), t.result ? 'pass' : 'fail'),
      t.decisive ? el('span', { class: 'badge badge-decisive' }, 'decisive') : null),
    cell({ class: 'location', 'data-label': 'Policy' }, t.location ? pathCode(t.location) : muted('—')));
    return row;
  }

  function headersTable(headers, caption) {
    const names = Object.keys(headers || {});
    if (!names.length) return el('p', null, muted('No headers.'));
    return el('table', { class: 'headers' },
      el('caption', { class: 'visually-hidden' }, caption),
      el('thead', null, el('tr', null, el('th', { scope: 'col' }, 'Header'), el('th', { scope: 'col' }, 'Value'))),
      el('tbody', null, names.map((name) => el('tr', null,
        el('th', { scope: 'row' }, el('code', null, name)),
        el('td', null, el('code', { class: 'value' }, String(headers[name])))))));
  }

  function responseSection(d) {
    if (d.outcome === 'allow') {
      return section('response-heading', 'Added to the upstream request',
        el('p', null, 'Portcullis answered ', el('strong', null, String(d.status)), ' to the gateway, which forwards the request upstream with these headers added.'),
        headersTable(d.upstreamHeaders, 'Headers added to the forwarded request'));
    }
    return section('response-heading', 'Returned to the client',
      el('p', null, 'Status ', el('strong', null, String(d.status)), '.'),
      el('h3', null, 'Headers'),
      headersTable(d.headers, 'Headers returned to the client'),
      el('h3', null, 'Body'),
      d.body ? el('pre', { class: 'json' }, JSON.stringify(d.body, null, 2)) : el('p', null, muted('No body.')));
  }

  function tokenSection(d) {
    const token = d.token;
    if (!token) {
      return section('token-heading', 'Token',
        el('p', null, muted('No token summary: no token was sent, or it could not be read.')));
    }
    const known = {
      sub: 'Subject', clientId: 'Client id', iss: 'Issuer', aud: 'Audience', exp: 'Expires',
      kid: 'Key id', alg: 'Algorithm', delegated: 'Issued to a user',
      binding: 'Sender binding',
    };
    const show = (value) => {
      if (value === null || value === undefined) return null;
      if (typeof value === 'boolean') return value ? 'yes' : 'no (client credentials)';
      // A binding check: which confirmation method (certificate, DPoP key) and how it ended.
      if (value && typeof value.method === 'string' && typeof value.result === 'string') {
        return value.method === 'none' ? `none (${value.result})` : `${value.method}: ${value.result}`;
      }
      if (Array.isArray(value)) return value.map(String).join(', ');
      if (typeof value === 'object') return el('code', null, JSON.stringify(value));
      return String(value);
    };
    const pairs = Object.keys(known).map((key) => [known[key], show(token[key])]);
    for (const key of Object.keys(token)) {
      if (!(key in known)) pairs.push([key, show(token[key])]);
    }
    return section('token-heading', 'Token', definitionList(pairs),
      el('p', { class: 'hint' }, 'A summary of the verified claims; the token itself is never stored.'));
  }

  // ---- the overview: GET /v1/overview, drawn as SVG ----

  const OVERVIEW_API = '/v1/overview';
  const OVERVIEW_MS = 3000;
  const rateSvg = $('rate-svg');
  const latencySvg = $('latency-svg');
  // The SVG namespace, from the page's own <svg> elements.
  const SVG_NS = rateSvg.namespaceURI;
  const overviewState = { timer: 0, traceUiUrl: null, loaded: false };

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(typeof child === 'string' ? document.createTextNode(child) : child);
      }
    }
    return node;
  }

  function listHref(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) if (value) search.set(name, value);
    return '/ui/?' + search;
  }

  // An SVG link navigates inside the page, as the page's HTML links do.
  function svgLink(href, label, ...children) {
    const link = svg('a', { href, 'aria-label': label }, svg('title', null, label), ...children);
    link.addEventListener('click', (event) => {
      if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      event.preventDefault();
      navigate(href);
    });
    return link;
  }

  const isoSecond = (t) => new Date(t * 1000).toISOString().replace('.000Z', 'Z');

  function drawRate(seconds) {
    const width = 1200;
    const height = 110;
    const n = Math.max(seconds.length, 1);
    const step = width / n;
    const peak = Math.max(1, ...seconds.map((s) => s.allow + s.deny));
    const bars = [];
    let allowTotal = 0;
    let denyTotal = 0;
    seconds.forEach((s, i) => {
      allowTotal += s.allow;
      denyTotal += s.deny;
      let y = height;
      for (const [outcome, count] of [['allow', s.allow], ['deny', s.deny]]) {
        if (!count) continue;
        const h = Math.max(1, (count / peak) * height);
        y -= h;
        const label = isoSecond(s.t).slice(11, 19) + ' UTC: ' + count + ' ' + outcome;
        bars.push(svgLink(listHref({ outcome, since: isoSecond(s.t) }), label,
          svg('rect', {
            class: 'bar-' + outcome, x: (i * step).toFixed(2), y: y.toFixed(2),
            width: Math.max(step - 0.5, 0.5).toFixed(2), height: h.toFixed(2),
            'data-outcome': outcome, 'data-count': count, 'data-t': s.t,
          })));
      }
    });
    rateSvg.replaceChildren(
      svg('line', { class: 'axis', x1: 0, y1: height, x2: width, y2: height }),
      svg('text', { x: 2, y: 10 }, peak + '/s'),
      svg('text', { x: 2, y: height + 14 }, '−' + Math.round(n / 60) + ' min'),
      svg('text', { x: width - 2, y: height + 14, 'text-anchor': 'end' }, 'now'),
      ...bars);
    rateSvg.dataset.allow = String(allowTotal);
    rateSvg.dataset.deny = String(denyTotal);
    $('rate-summary').textContent = allowTotal + ' allowed and ' + denyTotal
      + ' denied in the last ' + Math.round(n / 60) + ' minutes; peak ' + peak + ' a second.';
  }

  function drawTop(listEl, counts, what) {
    const items = counts.map((c) => {
      const name = what === 'rule'
        ? (c.rule || '(before the rules: URL, token or operation)')
        : (c.service || '(no service matched)');
      const where = what === 'rule' && c.service ? el('span', { class: 'muted' }, ' · ' + c.service) : null;
      return el('li', { 'data-count': c.count },
        el('a', { href: listHref({ outcome: 'deny', service: c.service }) }, name),
        where, el('span', { class: 'count' }, String(c.count)));
    });
    if (!items.length) items.push(el('li', { class: 'muted' }, 'No denials in this window.'));
    listEl.replaceChildren(...items);
  }

  function latencyLabel(bounds, i) {
    const micros = i < bounds.length ? bounds[i] : bounds[bounds.length - 1];
    const text = micros >= 1000 ? (micros / 1000) + ' ms' : micros + ' µs';
    return (i < bounds.length ? '≤' : '>') + text;
  }

  function drawLatency(latency) {
    const width = 300;
    const height = 100;
    const counts = latency.counts || [];
    const bounds = latency.boundsMicros || [];
    const peak = Math.max(1, ...counts);
    const step = width / Math.max(counts.length, 1);
    const bars = counts.map((count, i) => {
      const h = count ? Math.max(1, (count / peak) * height) : 0;
      const label = latencyLabel(bounds, i) + ': ' + count;
      return svg('g', null, svg('title', null, label),
        svg('rect', {
          class: 'bar-latency', x: (i * step + 1).toFixed(2), y: (height - h).toFixed(2),
          width: (step - 2).toFixed(2), height: h.toFixed(2), 'data-count': count,
        }));
    });
    latencySvg.replaceChildren(
      svg('line', { class: 'axis', x1: 0, y1: height, x2: width, y2: height }),
      svg('text', { x: 1, y: height + 14 }, latencyLabel(bounds, 0)),
      svg('text', { x: width - 1, y: height + 14, 'text-anchor': 'end' },
        latencyLabel(bounds, counts.length - 1)),
      ...bars);
  }

  async function refreshOverview() {
    clearTimeout(overviewState.timer);
    let data = null;
    try {
      const response = await fetch(OVERVIEW_API + '?seconds=300', { cache: 'no-store', headers: apiHeaders() });
      if (response.ok) data = await response.json().catch(() => null);
    } catch {
      data = null;
    }
    if (data && Array.isArray(data.seconds)) {
      overviewState.traceUiUrl = typeof data.traceUiUrl === 'string' ? data.traceUiUrl : null;
      overviewState.loaded = true;
      drawRate(data.seconds);
      drawTop($('top-rules'), data.denyingRules || [], 'rule');
      drawTop($('top-services'), data.denyingServices || [], 'service');
      drawLatency(data.latency || {});
    }
    if (state.view === 'list' && liveBox.checked && !document.hidden) {
      overviewState.timer = setTimeout(refreshOverview, OVERVIEW_MS);
    }
  }

  liveBox.addEventListener('change', () => { if (liveBox.checked && state.view === 'list') refreshOverview(); });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && state.view === 'list') refreshOverview();
  });

  // The overview also says which trace UI to link trace ids to: a decision's page opened
  // directly waits for it.
  if (/^\/ui\/decisions\//.test(location.pathname)) refreshOverview().finally(route);
  else route();
})();
