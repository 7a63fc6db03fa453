// Stands in for @antv/x6's run-time stylesheet loader in the bundle (see build.mjs): the
// Content-Security-Policy refuses <style> elements without the page's nonce, so the same
// CSS is served as a file, static/build/journey-canvas.css, that the page links.
export function ensure() {}
export function clean() {}
