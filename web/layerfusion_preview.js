// LayerFusion layer preview: shows what LayerFusion Save Layers wrote (FG with its
// transparency on a checkerboard, BG, BLENDED, and the soft/hard masks when they were saved)
// inside the node, with one toggle button per layer.
//
// Display only: the node saves its files without this script, the preview widget stores no
// value in the workflow, and it is never sent to the server.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_ID = "LayerFusionSaveLayers";
const WIDGET_NAME = "layerfusion_preview";
// Suffixes LayerFusionSaveLayers gives the files of one triplet (<prefix>_NNNNN_<suffix>.png).
// The node reports fg, bg and blended in its UI output; the masks exist only when their
// inputs were connected, so they are loaded only then, and their buttons stay disabled
// otherwise.
const LAYERS = [
  { key: "fg", label: "FG", reported: true },
  { key: "bg", label: "BG", reported: true },
  { key: "blended", label: "BLENDED", reported: true },
  { key: "soft_mask", label: "SOFT MASK", reported: false },
  { key: "hard_mask", label: "HARD MASK", reported: false },
];
const REPORTED_NAME = /^(.*)_(fg|bg|blended)\.png$/;
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

/** Group the node's reported images into triplets: [{stem, files: {fg, bg, blended, soft_mask, hard_mask}}]. */
export function groupTriplets(images) {
  const triplets = new Map();
  for (const image of images ?? []) {
    const match = REPORTED_NAME.exec(image?.filename ?? "");
    if (!match) continue;
    const stem = match[1];
    const id = `${image.type}/${image.subfolder}/${stem}`;
    if (!triplets.has(id)) {
      const files = {};
      for (const layer of LAYERS) {
        if (!layer.reported) {
          files[layer.key] = { ...image, filename: `${stem}_${layer.key}.png` };
        }
      }
      triplets.set(id, { stem, files });
    }
    triplets.get(id).files[match[2]] = image;
  }
  return [...triplets.values()];
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
    this.triplets = [];
    this.index = 0;
    this.layer = "fg";
    this.images = {};
    this.generation = 0;

    this.element = document.createElement("div");
    this.element.className = "layerfusion-preview";
    this.element.dataset.state = "empty";
    this.element.dataset.layer = this.layer;

    const bar = document.createElement("div");
    bar.className = "layerfusion-preview-bar";
    this.buttons = {};
    for (const layer of LAYERS) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = layer.label;
      button.dataset.layer = layer.key;
      button.disabled = true;
      button.setAttribute("aria-pressed", String(layer.key === this.layer));
      button.addEventListener("click", () => this.show(layer.key));
      this.buttons[layer.key] = button;
      bar.append(button);
    }
    this.prevButton = this.navButton("◀", -1);
    this.nextButton = this.navButton("▶", 1);
    this.info = document.createElement("span");
    this.info.className = "layerfusion-preview-info";
    this.info.textContent = "run the workflow to preview its layers";
    bar.append(this.prevButton, this.nextButton, this.info);

    this.canvas = document.createElement("canvas");
    this.canvas.className = "layerfusion-preview-canvas";
    this.element.append(bar, this.canvas);

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

  setOutput(images) {
    this.triplets = groupTriplets(images);
    if (this.triplets.length) {
      this.select(0);
      return;
    }
    this.generation++;
    this.images = {};
    Object.values(this.buttons).forEach((button) => (button.disabled = true));
    this.element.dataset.state = "empty";
    this.show("fg");
  }

  async select(index) {
    if (!this.triplets.length) return;
    this.index = (index + this.triplets.length) % this.triplets.length;
    const generation = ++this.generation;
    const triplet = this.triplets[this.index];
    this.element.dataset.state = "loading";
    const loaded = await Promise.all(
      LAYERS.map((layer) =>
        layer.reported || this.inputConnected(layer.key) ? loadImage(viewUrl(triplet.files[layer.key])) : null
      )
    );
    if (generation !== this.generation) return; // a newer output arrived meanwhile
    this.images = {};
    LAYERS.forEach((layer, i) => {
      this.images[layer.key] = loaded[i];
      this.buttons[layer.key].disabled = !loaded[i];
    });
    const multiple = this.triplets.length > 1;
    this.prevButton.hidden = !multiple;
    this.nextButton.hidden = !multiple;
    this.element.dataset.state = this.images.fg || this.images.bg || this.images.blended ? "ready" : "error";
    this.element.dataset.triplet = triplet.stem;
    this.show(this.images[this.layer] ? this.layer : "fg");
  }

  inputConnected(name) {
    return this.node.inputs?.find((input) => input.name === name)?.link != null;
  }

  show(key) {
    this.layer = key;
    this.element.dataset.layer = key;
    for (const [name, button] of Object.entries(this.buttons)) {
      button.setAttribute("aria-pressed", String(name === key));
    }
    const image = this.images[key];
    const count = this.triplets.length;
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
    const image = this.images[this.layer];
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
      this.layerfusionPreview?.setOutput(output?.images);
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
