// The imagesim search page: the ARD mosaic as base map, the chip grid on top, click-to-search or search by an
// uploaded image, positive/negative marking, filters (a change re-runs the search), an area picker, changed places
// and GeoJSON export. No build step, no CDN.
"use strict";

const GRID_MIN_ZOOM = 15;
const state = { positives: [], negatives: [], hits: [], model: null, image: null, imageUrl: null, lastExport: null,
                areas: [] };
let searchSeq = 0;  // only the newest search's answer is shown (filters changed quickly send several)
const $ = (id) => document.getElementById(id);

const map = L.map("map", { minZoom: 10, maxZoom: 20, zoomControl: true });
let imagery = null;
const grid = L.geoJSON(null, {
  style: { className: "chip-outline", color: "#ffffff", weight: 1, opacity: 0.6, fillOpacity: 0.02 },
  onEachFeature: (feature, layer) => {
    layer.on("click", () => {
      queryOutline.clearLayers();
      queryOutline.addData(feature);
      startSearch(feature.properties.chip);
    });
    layer.bindTooltip(`${feature.properties.chip}<br>${feature.properties.date}`, { sticky: true });
  },
}).addTo(map);
const resultOutlines = L.geoJSON(null, {
  style: (f) => ({ className: "result-outline", color: f.properties.negative ? "#e05555" : "#ffae00", weight: 2,
                   fillOpacity: 0.1 }),
}).addTo(map);
const queryOutline = L.geoJSON(null, { style: { color: "#3ddc84", weight: 3, fillOpacity: 0 } }).addTo(map);
const changeOutline = L.geoJSON(null, { style: { color: "#ff3dd5", weight: 3, fillOpacity: 0 } }).addTo(map);

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

let imageryBounds = null;

function setImagery(value) {
  if (imagery) map.removeLayer(imagery);
  const query = value ? (value.match(/^\d{4}-\d\d-\d\d$/) ? `?date=${value}` : `?catalog_id=${value}`) : "";
  imagery = L.tileLayer(`/tiles/{z}/{x}/{y}.png${query}`, {
    minZoom: 10, maxZoom: 20, maxNativeZoom: 19, tileSize: 256, className: "ard-tiles",
    attribution: "Maxar ARD (imagesim bucket)", bounds: imageryBounds,
  }).addTo(map);
  imagery.bringToBack();
}

async function loadGrid() {
  if (map.getZoom() < GRID_MIN_ZOOM) {
    grid.clearLayers();
    $("hint").textContent = "Zoom in to see the chip grid, then click a chip to search for places that look like it.";
    return;
  }
  try {
    const fc = await api(`/api/places?bbox=${viewBbox().join(",")}`);
    grid.clearLayers();
    grid.addData(fc);
    $("hint").textContent = fc.truncated
      ? `${fc.places} places in view, ${fc.features.length} drawn: zoom in to see them all.`
      : `${fc.places} indexed places in view: click one to search.`;
  } catch (err) {
    $("hint").textContent = err.message;
  }
}

// The view as west,south,east,north inside the API's ranges: a map panned past the antimeridian or zoomed out
// to the whole world reports longitudes beyond +-180, which the API refuses.
function viewBbox() {
  const b = map.getBounds();
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  let west = b.getWest(), east = b.getEast();
  if (east - west >= 360) { west = -180; east = 180; }
  else {
    const shift = Math.floor((west + 180) / 360) * 360;  // bring west into [-180, 180)
    west -= shift; east -= shift;
    if (east > 180) { west = -180; east = 180; }  // spans the antimeridian: the whole band (a superset)
  }
  return [west, clamp(b.getSouth(), -90, 90), east, clamp(b.getNorth(), -90, 90)];
}

function filters() {
  const f = {};
  const labels = [...$("labels").selectedOptions].map((o) => o.value);
  if (labels.length) f.labels = labels;
  if ($("since").value) f.since = $("since").value;
  if ($("until").value) f.until = $("until").value;
  if ($("in-view").checked) f.bbox = viewBbox();
  return f;
}

function requestBody() {
  const k = Math.max(1, Math.min(100, parseInt($("k").value, 10) || 12));
  return { positives: state.positives, negatives: state.negatives, k, filters: filters(), spread: $("spread").checked };
}

// The upload endpoint takes the filters as query parameters, as GET /api/search/chip does.
function queryParams(body) {
  const q = new URLSearchParams({ k: body.k, spread: body.spread });
  const f = body.filters;
  for (const label of f.labels || []) q.append("label", label);
  if (f.since) q.set("since", f.since);
  if (f.until) q.set("until", f.until);
  if (f.bbox) q.set("bbox", f.bbox.join(","));
  return q;
}

function hasQuery() {
  return state.positives.length > 0 || state.image !== null;
}

// The request of the current query: the chip examples (POST /api/search), else the uploaded image.
function searchRequest(format = "json") {
  const body = requestBody();
  if (state.positives.length) {
    return { url: format === "geojson" ? "/api/search?format=geojson" : "/api/search",
             options: { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) } };
  }
  const q = queryParams(body);
  if (format === "geojson") q.set("format", "geojson");
  const form = new FormData();
  form.append("file", state.image, state.image.name);
  return { url: `/api/search/image?${q}`, options: { method: "POST", body: form } };
}

function clearImage() {
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.image = null;
  state.imageUrl = null;
}

function startSearch(chip) {
  clearImage();
  state.positives = [chip];
  state.negatives = [];
  search();
}

function startImageSearch(file) {
  clearImage();
  state.positives = [];
  state.negatives = [];
  queryOutline.clearLayers();
  state.image = file;
  state.imageUrl = URL.createObjectURL(file);
  search();
}

async function search() {
  if (!hasQuery()) {
    setStatus("Mark at least one chip as positive (+), or upload an image, to search.", true);
    return;
  }
  if (state.positives.length) clearImage();  // examples marked on an image's results replace the image
  const seq = ++searchSeq;
  const request = searchRequest();
  const exportRequest = searchRequest("geojson");
  renderQuery();
  setStatus("searching…");
  try {
    const answer = await api(request.url, request.options);
    if (seq !== searchSeq) return;
    state.hits = answer.hits;
    state.lastExport = exportRequest;
    const ignored = !state.positives.length && state.negatives.length ? " (negatives need a positive chip)" : "";
    setStatus(`${answer.hits.length} results in ${answer.took_ms.toFixed(1)} ms from model ` +
              `${answer.model.version} (${answer.index_vectors} indexed chips)${ignored}`);
  } catch (err) {
    if (seq !== searchSeq) return;
    setStatus(err.message, true);
  }
  render();
}

// A filter changed: the current query runs again with it.
function searchAgainIfAny() {
  if (hasQuery()) search();
}

function mark(chip, sign) {
  const list = sign > 0 ? state.positives : state.negatives;
  const other = sign > 0 ? state.negatives : state.positives;
  const i = other.indexOf(chip);
  if (i >= 0) other.splice(i, 1);
  const j = list.indexOf(chip);
  if (j >= 0) list.splice(j, 1); else list.push(chip);
  render();
}

function renderExamples() {
  const box = $("examples");
  box.replaceChildren();
  for (const [chips, cls, sign] of [[state.positives, "example", 1], [state.negatives, "example neg", -1]]) {
    for (const chip of chips) {
      const tag = document.createElement("span");
      tag.className = cls;
      tag.textContent = (sign > 0 ? "+ " : "− ") + chip.replace(/\.jpg$/, "");
      const remove = document.createElement("button");
      remove.textContent = "×";
      remove.title = "remove this example";
      remove.onclick = () => mark(chip, sign);
      tag.append(remove);
      box.append(tag);
    }
  }
  const any = state.positives.length + state.negatives.length > 0 || state.image !== null;
  $("search-again").disabled = !hasQuery();
  $("clear").disabled = !any;
  $("export").disabled = !state.hits.length;
}

// The query as thumbnails above the results: the uploaded image, or the positive chips.
function renderQuery() {
  const box = $("query-thumbs");
  box.replaceChildren();
  const items = state.positives.map((chip) => ({ src: `/api/chips/${chip}/image`, name: chip.replace(/\.jpg$/, ""),
                                                 chip }));
  if (state.image) items.unshift({ src: state.imageUrl, name: state.image.name, chip: "" });
  for (const item of items) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = item.src;
    img.alt = `query ${item.name}`;
    if (item.chip) img.dataset.chip = item.chip;
    const caption = document.createElement("figcaption");
    caption.textContent = item.name;
    caption.title = item.name;
    figure.append(img, caption);
    box.append(figure);
  }
  box.hidden = items.length === 0;
}

function render() {
  renderExamples();
  renderQuery();
  const list = $("results");
  list.replaceChildren();
  resultOutlines.clearLayers();
  for (const hit of state.hits) {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.chip = hit.chip;
    if (state.positives.includes(hit.chip)) li.classList.add("positive");
    if (state.negatives.includes(hit.chip)) li.classList.add("negative");
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = hit.chip;
    img.loading = "lazy";
    img.onclick = () => map.flyToBounds(L.geoJSON(hit.geometry).getBounds(), { maxZoom: 18 });
    const caption = document.createElement("div");
    caption.className = "caption";
    for (const [text, cls] of [[`#${hit.rank}`, "rank"], [hit.score.toFixed(3), "score"], [hit.date, "date"]]) {
      const part = document.createElement("span");
      part.className = cls;
      part.textContent = text;
      caption.append(part);
    }
    const labels = document.createElement("div");
    labels.className = "labels";
    labels.textContent = hit.labels.map((l) => l.label).join(", ") || "no label";
    labels.title = hit.labels.map((l) => `${l.label} ${l.probability.toFixed(2)}`).join("\n");
    const buttons = document.createElement("div");
    buttons.className = "mark";
    for (const [text, sign, cls] of [["+ more like", 1, "mark-positive"], ["− less like", -1, "mark-negative"]]) {
      const b = document.createElement("button");
      b.textContent = text;
      b.className = cls;
      b.onclick = () => mark(hit.chip, sign);
      buttons.append(b);
    }
    li.append(img, caption, labels, buttons);
    li.onmouseenter = () => li.classList.add("highlight");
    li.onmouseleave = () => li.classList.remove("highlight");
    list.append(li);
    resultOutlines.addData({ type: "Feature", geometry: hit.geometry,
                             properties: { chip: hit.chip, negative: state.negatives.includes(hit.chip) } });
  }
}

async function exportGeoJSON() {
  if (!state.lastExport) return;
  try {
    const fc = await api(state.lastExport.url, state.lastExport.options);
    const blob = new Blob([JSON.stringify(fc, null, 1)], { type: "application/geo+json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `imagesim-results-${fc.model.version}.geojson`;
    a.click();
    URL.revokeObjectURL(a.href);
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function loadChanges() {
  const list = $("changes");
  list.replaceChildren();
  $("change-detail").hidden = true;
  $("changes-empty").textContent = "loading…";
  $("changes-empty").hidden = false;
  try {
    const answer = await api("/api/changes?k=15");
    for (const c of answer.changes) {
      const li = document.createElement("li");
      li.textContent = `score ${c.score.toFixed(1)} · ${c.kind} · ${c.date_before} → ${c.date_after}`;
      li.title = c.place;
      li.onclick = () => showChange(c);
      list.append(li);
    }
    $("changes-empty").textContent = answer.changes.length ? "" : "no changed places yet: run encoder_job";
    $("changes-empty").hidden = answer.changes.length > 0;
  } catch (err) {
    $("changes-empty").textContent = err.message;
  }
}

function showChange(c) {
  $("change-detail").hidden = false;
  $("change-place").textContent = `place ${c.place} · score ${c.score.toFixed(1)} (${c.method})`;
  $("before-img").src = `/api/chips/${c.before}/image`;
  $("after-img").src = `/api/chips/${c.after}/image`;
  $("map-toggle-label").hidden = !c.map_url;
  if (c.map_url) $("map-img").src = c.map_url;
  $("map-img").hidden = !c.map_url || !$("map-toggle").checked;
  $("before-cap").textContent = `before: ${c.date_before}`;
  const how = c.change === null ? `embedding distance ${c.distance.toFixed(3)}` : `change ${c.change.toFixed(3)}`;
  $("after-cap").textContent = `after: ${c.date_after} (${how})`;
  changeOutline.clearLayers();
  changeOutline.addData(c.geometry);
  map.flyToBounds(changeOutline.getBounds(), { maxZoom: 17 });
}

async function init() {
  let health;
  try {
    health = await api("/api/health");
  } catch (err) {
    $("versions").textContent = err.message;
    return;
  }
  state.model = health.model;
  $("versions").textContent = health.model
    ? `model ${health.model.name}/${health.model.version} · index ${health.index_vectors} chips (${health.index_kind})`
    : `no search index: ${health.detail}`;
  for (const label of health.labels) $("labels").append(new Option(label, label));
  for (const a of health.acquisitions) $("imagery").append(new Option(`${a.date} ${a.catalog_id}`, a.catalog_id));
  state.areas = health.areas || [];
  state.areas.forEach((area, i) => {
    const cells = `${area.cells} cell${area.cells === 1 ? "" : "s"}`;
    $("region").append(new Option(`${area.name} (${cells})`, String(i)));
  });
  if (health.bounds) {
    const [w, s, e, n] = health.bounds;
    imageryBounds = L.latLngBounds([s, w], [n, e]);
  }
  setImagery("");
  const start = health.start || [24.94, 60.17];
  map.setView([start[1], start[0]], GRID_MIN_ZOOM);
  map.on("moveend", loadGrid);
  loadGrid();
}

// The map over a delivered area of /api/health's list.
function goToArea(index) {
  const area = state.areas[index];
  if (!area) return;
  const [w, s, e, n] = area.bounds;
  map.fitBounds([[s, w], [n, e]]);
}

$("search-again").onclick = search;
$("clear").onclick = () => {
  state.positives = []; state.negatives = []; state.hits = [];
  clearImage();
  $("upload").value = "";
  queryOutline.clearLayers();
  render();
  setStatus("");
};
$("export").onclick = exportGeoJSON;
$("load-changes").onclick = loadChanges;
$("map-toggle").onchange = (e) => { $("map-img").hidden = !e.target.checked; };
$("imagery").onchange = (e) => setImagery(e.target.value);
$("region").onchange = (e) => goToArea(parseInt(e.target.value, 10));
$("upload").onchange = (e) => { if (e.target.files.length) startImageSearch(e.target.files[0]); };
for (const id of ["labels", "since", "until", "in-view", "spread", "k"]) {
  $(id).addEventListener("change", searchAgainIfAny);
}
window.imagesim = { map, state, search, startSearch, startImageSearch, goToArea };
init();
