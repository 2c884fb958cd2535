// Lays the diagram out off the page's thread (a few hundred boxes take dagre a moment).
import dagre from "../vendor/dagre-3.1.3/dagre.esm.js";

self.onmessage = (event) => {
  const { boxes, blocks, edges } = event.data;
  const g = new dagre.graphlib.Graph({ compound: true, multigraph: true });
  g.setGraph({ rankdir: "TB", nodesep: 18, ranksep: 22, edgesep: 8, marginx: 12, marginy: 12 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const block of blocks) g.setNode(block.id, { label: block.label, paddingTop: 16 });
  for (const block of blocks) if (block.parent) g.setParent(block.id, block.parent);
  for (const box of boxes) {
    g.setNode(box.id, { width: box.width, height: box.height });
    if (box.parent) g.setParent(box.id, box.parent);
  }
  edges.forEach((edge, index) => {
    g.setEdge(edge.from, edge.to,
      { label: edge.label, width: edge.labelWidth, height: 12, labelpos: "c" }, `e${index}`);
  });
  dagre.layout(g);
  const nodes = {};
  for (const id of g.nodes()) {
    const n = g.node(id);
    nodes[id] = { x: n.x, y: n.y, width: n.width, height: n.height };
  }
  const laid = g.edges().map((e) => {
    const data = g.edge(e);
    return { name: e.name, points: data.points, x: data.x, y: data.y };
  });
  const size = g.graph();
  self.postMessage({ nodes, edges: laid, width: size.width, height: size.height });
};
