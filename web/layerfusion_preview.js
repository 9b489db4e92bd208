// LayerFusion layer preview: shows what LayerFusion Save Layers wrote inside the node, one
// toggle button per layer: for a triplet FG (its transparency on a checkerboard), BG, BLENDED
// and the soft/hard masks when they were saved; for a layer bundle (Decode Layers or
// Re-harmonize) each FG layer by its name, back to front, then BG, BLENDED, the effects layer of
// a re-harmonised bundle, and the soft/hard masks of the FG layer shown last.
//
// Display only: the node saves its files without this script, the preview widget stores no
// value in the workflow, and it is never sent to the server.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_ID = "LayerFusionSaveLayers";
const WIDGET_NAME = "layerfusion_preview";
// Save Layers names the files of one image <stem>_<suffix>.png, <stem> = <prefix>_NNNNN.
// It reports the layers' PNGs in its UI output (`images`, in order: a triplet's fg, bg,
// blended; a bundle's fg<k>[_<name>] back to front, bg, blended, effects) and its other files
// (masks, PSD) under OTHER_FILES. Every image has exactly one _bg.png: it gives the stems.
const OTHER_FILES = "layerfusion_files";
const BG_NAME = /^(.*_\d{5,})_bg\.png$/;
const FG_LAYER = /^fg(\d+)(?:_(.+))?$/;
const BASE_LAYERS = { fg: "FG", bg: "BG", blended: "BLENDED", effects: "EFFECTS" };
const MASKS = [
  { key: "soft_mask", label: "SOFT MASK" },
  { key: "hard_mask", label: "HARD MASK" },
];
const TRIPLET_KEYS = ["fg", "bg", "blended"];
const CHECKER_SIZE = 8;
const CHECKER_LIGHT = "#d0d0d0";
const CHECKER_DARK = "#8c8c8c";
const MIN_HEIGHT = 220;

const STYLE = `
.layerfusion-preview { display: flex; flex-direction: column; gap: 4px; width: 100%; height: 100%;
  box-sizing: border-box; font: 11px sans-serif; color: #ddd; }
.layerfusion-preview-bar { display: flex; flex-wrap: wrap; gap: 3px; align-items: center; }
.layerfusion-preview-bar button { background: #333; color: #ddd; border: 1px solid #555;
  border-radius: 4px; padding: 2px 6px; font: inherit; cursor: pointer; }
.layerfusion-preview-bar button[aria-pressed="true"] { background: #2f6fbf; border-color: #6aa3ea; color: #fff; }
.layerfusion-preview-bar button:disabled { opacity: 0.35; cursor: default; }
.layerfusion-preview-info { margin-left: auto; opacity: 0.8; white-space: nowrap; }
.layerfusion-preview-canvas { flex: 1 1 auto; min-height: 0; width: 100%; display: block; }
`;

function addStyle() {
  if (document.getElementById("layerfusion-preview-style")) return;
  const style = document.createElement("style");
  style.id = "layerfusion-preview-style";
  style.textContent = STYLE;
  document.head.append(style);
}

function viewUrl(file) {
  const params = new URLSearchParams({
    filename: file.filename,
    subfolder: file.subfolder ?? "",
    type: file.type ?? "output",
  });
  return api.apiURL(`/view?${params}${app.getRandParam?.() ?? ""}`);
}

function folderOf(file) {
  return `${file?.type ?? "output"}/${file?.subfolder ?? ""}`;
}

/** The layer a reported file suffix names: {key, label, title, fg} or null. */
function layerOf(suffix) {
  const fg = FG_LAYER.exec(suffix);
  if (fg) {
    const name = fg[2] ?? "";
    return { key: `fg${fg[1]}`, label: name || `FG${fg[1]}`, title: `FG layer ${fg[1]}${name ? `: ${name}` : ""}`, fg: true };
  }
  if (Object.hasOwn(BASE_LAYERS, suffix)) {
    return { key: suffix, label: BASE_LAYERS[suffix], title: suffix, fg: suffix === "fg" };
  }
  return null;
}

/**
 * Group the node's output into one entry per saved image:
 * [{stem, kind: "triplet" | "bundle", layers: [{key, label, title, fg, file}], masks: {fgKey: {soft_mask, hard_mask}}}].
 * ``images``: the reported layer PNGs; ``others``: the other saved files (null when the output
 * does not list them: then a bundle's masks are taken as saved, a triplet's as unknown).
 */
export function groupLayerFiles(images, others) {
  let groups = [];
  for (const image of images ?? []) {
    const match = BG_NAME.exec(image?.filename ?? "");
    if (match) groups.push({ stem: match[1], folder: folderOf(image), kind: "triplet", layers: [], masks: {} });
  }
  // A layer whose name ends like "_00002_bg" is a file of another image's stem, not a stem.
  groups = groups.filter(
    (g) => !groups.some((other) => other !== g && other.folder === g.folder && g.stem.startsWith(`${other.stem}_`))
  );
  const byLength = [...groups].sort((a, b) => b.stem.length - a.stem.length);
  const groupOf = (file) =>
    byLength.find((g) => g.folder === folderOf(file) && file.filename.startsWith(`${g.stem}_`));
  for (const image of images ?? []) {
    const filename = image?.filename ?? "";
    if (!filename.endsWith(".png")) continue;
    const group = groupOf(image);
    if (!group) continue;
    const layer = layerOf(filename.slice(group.stem.length + 1, -".png".length));
    if (!layer || group.layers.some((l) => l.key === layer.key)) continue;
    if (layer.fg && layer.key !== "fg") group.kind = "bundle";
    group.layers.push({ ...layer, file: image });
  }
  const saved = others ? new Set(others.map((file) => `${folderOf(file)}/${file.filename}`)) : null;
  for (const group of groups) {
    for (const layer of group.layers.filter((l) => l.fg)) {
      const prefix = layer.key === "fg" ? group.stem : layer.file.filename.slice(0, -".png".length);
      group.masks[layer.key] = {};
      for (const mask of MASKS) {
        const file = { ...layer.file, filename: `${prefix}_${mask.key}.png` };
        const known = saved ? saved.has(`${group.folder}/${file.filename}`) : group.kind === "bundle" ? true : null;
        group.masks[layer.key][mask.key] = known === false ? null : { file, known };
      }
    }
  }
  return groups.filter((group) => group.layers.length);
}

function loadImage(url) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => resolve(null);
    img.src = url;
  });
}

class LayerPreview {
  constructor(node) {
    this.node = node;
    this.groups = [];
    this.index = 0;
    this.layer = "fg";
    this.maskLayer = "fg"; // the FG layer whose masks the mask buttons show
    this.images = {};
    this.generation = 0;

    this.element = document.createElement("div");
    this.element.className = "layerfusion-preview";
    this.element.dataset.state = "empty";
    this.element.dataset.layer = this.layer;

    this.bar = document.createElement("div");
    this.bar.className = "layerfusion-preview-bar";
    this.buttons = {};
    this.prevButton = this.navButton("◀", -1);
    this.nextButton = this.navButton("▶", 1);
    this.info = document.createElement("span");
    this.info.className = "layerfusion-preview-info";
    this.info.textContent = "run the workflow to preview its layers";
    this.bar.append(this.prevButton, this.nextButton, this.info);
    this.setButtons(TRIPLET_KEYS.map((key) => layerOf(key)));

    this.canvas = document.createElement("canvas");
    this.canvas.className = "layerfusion-preview-canvas";
    this.element.append(this.bar, this.canvas);

    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.canvas);
  }

  navButton(text, step) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = text;
    button.hidden = true;
    button.addEventListener("click", () => this.select(this.index + step));
    return button;
  }

  /** One button per layer, then the mask buttons; all disabled until their image loads. */
  setButtons(layers) {
    const entries = [...layers, ...MASKS.map((m) => ({ ...m, title: m.key }))];
    const signature = entries.map((e) => `${e.key}=${e.label}`).join("|");
    if (signature === this.buttonSignature) return;
    this.buttonSignature = signature;
    Object.values(this.buttons).forEach((button) => button.remove());
    this.buttons = {};
    for (const entry of entries) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = entry.label;
      button.title = entry.title ?? entry.label;
      button.dataset.layer = entry.key;
      button.disabled = true;
      button.setAttribute("aria-pressed", String(entry.key === this.layer));
      button.addEventListener("click", () => this.show(entry.key));
      this.buttons[entry.key] = button;
      this.bar.insertBefore(button, this.prevButton);
    }
  }

  setOutput(output) {
    const others = Array.isArray(output?.[OTHER_FILES]) ? output[OTHER_FILES] : null;
    this.groups = groupLayerFiles(output?.images, others);
    if (this.groups.length) {
      this.select(0);
      return;
    }
    this.generation++;
    this.images = {};
    this.setButtons(TRIPLET_KEYS.map((key) => layerOf(key)));
    Object.values(this.buttons).forEach((button) => (button.disabled = true));
    this.element.dataset.state = "empty";
    this.show("fg");
  }

  async select(index) {
    if (!this.groups.length) return;
    this.index = (index + this.groups.length) % this.groups.length;
    const generation = ++this.generation;
    const group = this.groups[this.index];
    this.element.dataset.state = "loading";
    const wanted = group.layers.map((layer) => [layer.key, layer.file]);
    for (const [fgKey, masks] of Object.entries(group.masks)) {
      for (const mask of MASKS) {
        const entry = masks[mask.key];
        // A triplet's masks are saved when their inputs are connected (older outputs do not list them).
        if (entry && (entry.known !== null || this.inputConnected(mask.key))) {
          wanted.push([`${fgKey}:${mask.key}`, entry.file]);
        }
      }
    }
    const loaded = await Promise.all(wanted.map(([, file]) => loadImage(viewUrl(file))));
    if (generation !== this.generation) return; // a newer output arrived meanwhile
    this.images = {};
    wanted.forEach(([key], i) => (this.images[key] = loaded[i]));
    this.setButtons(group.layers);
    for (const layer of group.layers) this.buttons[layer.key].disabled = !this.images[layer.key];
    const multiple = this.groups.length > 1;
    this.prevButton.hidden = !multiple;
    this.nextButton.hidden = !multiple;
    this.element.dataset.state = group.layers.some((layer) => this.images[layer.key]) ? "ready" : "error";
    this.element.dataset.kind = group.kind;
    this.element.dataset.triplet = group.stem;
    const fgKeys = group.layers.filter((layer) => layer.fg).map((layer) => layer.key);
    if (!fgKeys.includes(this.maskLayer)) this.maskLayer = fgKeys[0] ?? "fg";
    // Stay on the layer shown (stepping through a batch), else the first one that loaded.
    const first = group.layers.find((layer) => this.images[layer.key])?.key ?? group.layers[0].key;
    this.show(this.buttons[this.layer] && this.imageFor(this.layer) ? this.layer : first);
  }

  inputConnected(name) {
    return this.node.inputs?.find((input) => input.name === name)?.link != null;
  }

  /** The image a button shows: a layer's own, or the mask of the FG layer shown last. */
  imageFor(key) {
    return MASKS.some((mask) => mask.key === key) ? this.images[`${this.maskLayer}:${key}`] : this.images[key];
  }

  show(key) {
    this.layer = key;
    const group = this.groups[this.index];
    if (group?.layers.some((layer) => layer.key === key && layer.fg)) this.maskLayer = key;
    this.element.dataset.layer = key;
    this.element.dataset.maskLayer = this.maskLayer;
    for (const [name, button] of Object.entries(this.buttons)) {
      button.setAttribute("aria-pressed", String(name === key));
    }
    for (const mask of MASKS) {
      if (this.buttons[mask.key]) this.buttons[mask.key].disabled = !this.imageFor(mask.key);
    }
    const image = this.imageFor(key);
    const count = this.groups.length;
    const position = count > 1 ? ` · ${this.index + 1}/${count}` : "";
    this.info.textContent = image ? `${image.naturalWidth}×${image.naturalHeight}${position}` : "";
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    this.drawnRect = null;
    const image = this.imageFor(this.layer);
    if (!image) return;
    const scale = Math.min(width / image.naturalWidth, height / image.naturalHeight);
    const w = Math.max(1, Math.round(image.naturalWidth * scale));
    const h = Math.max(1, Math.round(image.naturalHeight * scale));
    const x = Math.floor((width - w) / 2);
    const y = Math.floor((height - h) / 2);
    // Checkerboard under the image: transparent parts of the FG show it.
    const cell = Math.max(1, Math.round(CHECKER_SIZE * ratio));
    ctx.fillStyle = CHECKER_LIGHT;
    ctx.fillRect(x, y, w, h);
    ctx.fillStyle = CHECKER_DARK;
    for (let row = 0; row * cell < h; row++) {
      for (let col = row % 2; col * cell < w; col += 2) {
        ctx.fillRect(x + col * cell, y + row * cell, Math.min(cell, w - col * cell), Math.min(cell, h - row * cell));
      }
    }
    ctx.imageSmoothingEnabled = scale < 1;
    ctx.drawImage(image, x, y, w, h);
    this.drawnRect = { x, y, w, h };
  }

  remove() {
    this.resizeObserver.disconnect();
    this.generation++;
  }
}

app.registerExtension({
  name: "LayerFusion.LayerPreview",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;
    addStyle();

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const preview = new LayerPreview(this);
      const widget = this.addDOMWidget(WIDGET_NAME, "layerfusion_preview", preview.element, {
        serialize: false, // nothing in widgets_values, nothing in the prompt
        hideOnZoom: false,
        getValue: () => undefined,
        setValue: () => {},
      });
      widget.serialize = false;
      widget.computeLayoutSize = () => ({ minHeight: MIN_HEIGHT, minWidth: 1 });
      // The frontend's own output gallery would show the same PNGs again under the preview
      // (Nodes 2.0 honours this flag; the classic canvas is handled in onDrawBackground below).
      this.hideOutputImages = true;
      this.layerfusionPreview = preview;
      const onRemoved = this.onRemoved;
      this.onRemoved = function () {
        preview.remove();
        return onRemoved?.apply(this, arguments);
      };
      return result;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = onExecuted?.apply(this, arguments);
      this.layerfusionPreview?.setOutput(output);
      return result;
    };

    // The layers are shown by the preview above; skip the frontend's default grid of the same
    // images (it would draw them a second time, without the checkerboard). Without this
    // script, that default preview is what users see.
    const onDrawBackground = nodeType.prototype.onDrawBackground;
    nodeType.prototype.onDrawBackground = function () {
      if (this.layerfusionPreview) return;
      return onDrawBackground?.apply(this, arguments);
    };
  },
});
