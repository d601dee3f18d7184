// Shared by the workspace's packages.
export function echo(message) {
  return String(message);
}

export function add(a, b) {
  return Number(a) + Number(b);
}
