/* pair_style mlip: mlip models in LAMMPS through an AOTInductor package.
 *
 * The package (written by `mlip export lammps MODEL.pt -o MODEL.pt2`) maps a graph
 * (edge vectors, species, edge index, a mask of the nodes whose energy this rank owns)
 * to per-node energies and the derivative of the owned energy with respect to every edge
 * vector. This file builds that graph from LAMMPS's atoms and turns the derivatives into
 * forces and virial.
 *
 * Domain decomposition: a model with L message-passing layers and cutoff r_c gives an
 * atom an energy that depends on atoms up to L r_c away, so the ghost shell must reach
 * L r_c + skin (set here when the user has not set `comm_modify cutoff`). Nodes of the
 * graph are atoms by ID: every image of one atom on this rank (a periodic image, or the
 * local atom's own ghost copies in a small box) is one node, so a periodic box on one
 * rank has exactly its own atoms as nodes and the same edges as mlip's own neighbour
 * list. Nodes are found breadth-first from the local atoms, out to L hops; only nodes
 * fewer than L hops away need their complete neighbourhood, so edges are taken from
 * their neighbour lists (each pair once, with its mirror: the package expects mirrored
 * order). Layer t of the model only needs the nodes within L - t hops: pairs are sorted
 * by the depths of their two nodes, so each layer's nodes and edges are prefixes that the
 * package receives as per-layer index sets (a ghost k hops out enters only the first
 * L - k layers). Each pair's force acts on the two atoms (images) it joins, so forces on
 * ghosts are reverse-communicated by LAMMPS (newton_pair on) and the virial is the sum
 * over pairs of -r_ij (x) dE/dr_ij, split evenly between the two atoms for per-atom
 * virials. The same graph, in Python: mlip/integrations/lammps/graph.py.
 *
 * Part of the mlip LAMMPS plugin (GPL-2.0-or-later, see LICENSE in this folder). */

#include "pair_mlip.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstring>
#include <sstream>

using namespace LAMMPS_NS;

namespace {

constexpr const char *PACKAGE_FORMAT = "2";

std::string first_line(const char *text)
{
  std::string s(text ? text : "");
  auto end = s.find('\n');
  return end == std::string::npos ? s : s.substr(0, end);
}

// One of each pair of opposite vectors (the self-image pairs of a small periodic box).
bool positive(double x, double y, double z)
{
  if (x != 0.0) return x > 0.0;
  if (y != 0.0) return y > 0.0;
  return z > 0.0;
}

}    // namespace

PairMLIP::PairMLIP(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // the virial is tallied pair by pair
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairMLIP::~PairMLIP()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairMLIP::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
  species_of_type.assign(n, -1);
}

void PairMLIP::settings(int narg, char ** /*arg*/)
{
  if (narg != 0)
    error->all(FLERR,
               "pair_style mlip takes no arguments: the model comes with "
               "`pair_coeff * * MODEL.pt2 <one element per atom type>`");
}

void PairMLIP::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 3 + ntypes || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR,
               "pair_coeff mlip: expected `pair_coeff * * MODEL.pt2` followed by one element per "
               "atom type ({} types), got {} arguments",
               ntypes, narg);
  package_path = arg[2];

  std::unordered_map<std::string, std::string> meta;
  try {
    meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(package_path,
                                                                               "model");
  } catch (std::exception &err) {
    error->all(FLERR,
               "pair_coeff mlip: cannot read {} as a package ({}); a model file is compiled "
               "into one with `mlip export lammps MODEL.pt -o MODEL.pt2`",
               package_path, first_line(err.what()));
  }
  if (meta.count("mlip_lammps_format") == 0)
    error->all(FLERR,
               "pair_coeff mlip: {} is not an mlip LAMMPS package; a model file is compiled "
               "into one with `mlip export lammps MODEL.pt -o MODEL.pt2`",
               package_path);
  if (meta["mlip_lammps_format"] != PACKAGE_FORMAT)
    error->all(FLERR,
               "pair_coeff mlip: {} has package format {}, this plugin reads {}: export the "
               "model again with this mlip, or rebuild the plugin (`mlip lammps build`)",
               package_path, meta["mlip_lammps_format"], PACKAGE_FORMAT);
  for (const char *key : {"elements", "cutoff", "hops", "dtype", "device"})
    if (meta.count(key) == 0)
      error->all(FLERR, "pair_coeff mlip: {} lacks the metadata key '{}'", package_path, key);

  elements.clear();
  std::istringstream names(meta["elements"]);
  for (std::string name; names >> name;) elements.push_back(name);
  cutoff = std::stod(meta["cutoff"]);
  hops = std::stoi(meta["hops"]);
  double_precision = meta["dtype"] == "float64";
  device = meta["device"];

  std::string known;
  for (const auto &name : elements) known += (known.empty() ? "" : " ") + name;
  for (int t = 1; t <= ntypes; t++) {
    const std::string name = arg[2 + t];
    int species = -1;
    for (size_t s = 0; s < elements.size(); s++)
      if (elements[s] == name) species = (int) s;
    if (species < 0)
      error->all(FLERR, "pair_coeff mlip: element {} (atom type {}) is not in the model {} ({})",
                 name, t, package_path, known);
    species_of_type[t] = species;
  }

  try {
    loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package_path, "model");
  } catch (std::exception &err) {
    error->all(FLERR, "pair_coeff mlip: cannot load {} on {} ({})", package_path, device,
               first_line(err.what()));
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

void PairMLIP::init_style()
{
  if (!loader) error->all(FLERR, "pair_style mlip: pair_coeff * * MODEL.pt2 ... is missing");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style mlip needs `units metal` (eV, Å, ps), not units {}",
               update->unit_style);
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair_style mlip needs newton_pair on (forces on ghost atoms are sent back to "
               "their owners)");
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style mlip needs atom IDs");
  if (atom->molecular != 0 &&
      (force->special_lj[1] != 1.0 || force->special_lj[2] != 1.0 || force->special_lj[3] != 1.0))
    error->all(FLERR,
               "pair_style mlip needs every pair in the neighbour list: use `special_bonds "
               "lj/coul 1.0 1.0 1.0`");

  // The ghost shell must hold every atom within hops x cutoff of a local atom until the
  // next neighbour-list rebuild.
  const double needed = hops * cutoff + neighbor->skin;
  const bool ours = comm->cutghostuser == 0.0 || comm->cutghostuser == ghost_cutoff_set;
  if (ours) {
    if (comm->me == 0 && comm->cutghostuser != needed)
      utils::logmesg(lmp,
                     "pair_style mlip: ghost cutoff set to {:.6g} A ({} message-passing "
                     "layers x {:.6g} A cutoff + {:.6g} A skin)\n",
                     needed, hops, cutoff, neighbor->skin);
    comm->cutghostuser = needed;
    ghost_cutoff_set = needed;
  } else if (comm->cutghostuser < needed) {
    error->all(FLERR,
               "pair_style mlip: comm_modify cutoff {:.6g} A is smaller than the model's "
               "reach, {} layers x {:.6g} A + {:.6g} A skin = {:.6g} A: raise it or remove it",
               comm->cutghostuser, hops, cutoff, neighbor->skin, needed);
  }

  // Nodes up to hops - 1 away need their own neighbour lists: ghost lists from 2 layers on.
  neighbor->add_request(this, NeighConst::REQ_FULL | (hops > 1 ? NeighConst::REQ_GHOST : 0));
  at::set_num_threads(comm->nthreads > 0 ? comm->nthreads : 1);
}

double PairMLIP::init_one(int, int)
{
  return cutoff;
}

void PairMLIP::build_graph(int nlocal)
{
  double **x = atom->x;
  tagint *tag = atom->tag;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double cut2 = cutoff * cutoff;
  // visit(j, dx, dy, dz) for every neighbour j of atom a inside the cutoff
  auto neighbours_of = [&](int a, auto &&visit) {
    const int *neighbors = firstneigh[a];
    for (int jj = 0; jj < numneigh[a]; jj++) {
      const int j = neighbors[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[a][0], dy = x[j][1] - x[a][1], dz = x[j][2] - x[a][2];
      if (dx * dx + dy * dy + dz * dz < cut2) visit(j, dx, dy, dz);
    }
  };

  // Nodes 0 and 1 pad every call (see compute); the local atoms follow, as nodes 2...
  node_of_tag.clear();
  node_atom.assign(2, -1);
  node_depth.assign(2, -1);
  node_of_tag.reserve(2 * (size_t) nlocal + 16);
  for (int i = 0; i < nlocal; i++) {
    node_of_tag.emplace(tag[i], (int) node_atom.size());
    node_atom.push_back(i);
    node_depth.push_back(0);
  }
  // Breadth first: the first image of an atom reached is its node's representative, and
  // nodes are in order of depth.
  size_t begin = 2;
  for (int depth = 0; depth < hops; depth++) {
    const size_t end = node_atom.size();
    for (size_t p = begin; p < end; p++) {
      neighbours_of(node_atom[p], [&](int j, double, double, double) {
        if (node_of_tag.emplace(tag[j], (int) node_atom.size()).second) {
          node_atom.push_back(j);
          node_depth.push_back(depth + 1);
        }
      });
    }
    begin = end;
  }

  // Pairs: every pair of a node closer than `hops` (complete neighbourhood) once, the
  // shallower node as receiver (node ids grow with depth), bucketed by (receiver depth,
  // sender depth) = (d, d) or (d, d + 1).
  const int buckets = 2 * hops;
  std::vector<std::vector<int>> bucket_atoms(buckets), bucket_nodes(buckets);
  std::vector<std::vector<double>> bucket_vectors(buckets);
  for (size_t p = 2; p < node_atom.size(); p++) {
    if (node_depth[p] >= hops) break;
    const int a = node_atom[p];
    neighbours_of(a, [&](int j, double dx, double dy, double dz) {
      const int q = node_of_tag.find(tag[j])->second;
      if (node_depth[q] < hops) {    // found from q's side too: keep one direction
        if (q < (int) p) return;
        if (q == (int) p && !positive(dx, dy, dz)) return;
      }
      const int b = 2 * node_depth[p] + (node_depth[q] - node_depth[p]);
      bucket_atoms[b].insert(bucket_atoms[b].end(), {a, j});
      bucket_nodes[b].insert(bucket_nodes[b].end(), {(int) p, q});
      bucket_vectors[b].insert(bucket_vectors[b].end(), {dx, dy, dz});
    });
  }
  pair_atoms.clear();
  pair_nodes.clear();
  pair_vectors.clear();
  pair_depths.clear();
  for (int b = 0; b < buckets; b++) {
    pair_atoms.insert(pair_atoms.end(), bucket_atoms[b].begin(), bucket_atoms[b].end());
    pair_nodes.insert(pair_nodes.end(), bucket_nodes[b].begin(), bucket_nodes[b].end());
    pair_vectors.insert(pair_vectors.end(), bucket_vectors[b].begin(), bucket_vectors[b].end());
    pair_depths.insert(pair_depths.end(), bucket_atoms[b].size() / 2, b);
  }
}

void PairMLIP::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  const int nlocal = atom->nlocal;
  build_graph(nlocal);


  // Nodes 0 and 1 and pair 0 pad: every call and every layer has >= 2 nodes and edges.
  const int64_t num = (int64_t) node_atom.size();
  const int64_t pairs = (int64_t) pair_nodes.size() / 2;
  const int64_t half = pairs + 1;
  at::Tensor vectors = at::empty({2 * half, 3}, at::kDouble);
  at::Tensor species = at::empty({num}, at::kLong);
  at::Tensor edge_index = at::empty({2, 2 * half}, at::kLong);
  at::Tensor local = at::zeros({num}, at::kDouble);
  double *v = vectors.data_ptr<double>();
  int64_t *s = species.data_ptr<int64_t>();
  int64_t *sender = edge_index.data_ptr<int64_t>();
  int64_t *receiver = sender + 2 * half;
  double *own = local.data_ptr<double>();
  int *type = atom->type;
  s[0] = s[1] = 0;
  for (int64_t p = 2; p < num; p++) s[p] = species_of_type[type[node_atom[p]]];
  for (int i = 0; i < nlocal; i++) own[2 + i] = 1.0;
  for (int64_t k = 0; k < half; k++) {
    const bool pad = k == 0;
    const int64_t p = pad ? 0 : pair_nodes[2 * (k - 1)];        // receiver
    const int64_t q = pad ? 1 : pair_nodes[2 * (k - 1) + 1];    // sender
    sender[k] = q;
    receiver[k] = p;
    sender[half + k] = p;
    receiver[half + k] = q;
    for (int c = 0; c < 3; c++) {
      const double value = pad ? (c == 0 ? 0.5 * cutoff : 0.0) : pair_vectors[3 * (k - 1) + c];
      v[3 * k + c] = value;
      v[3 * (half + k) + c] = -value;
    }
  }

  // Layer t = 1..L computes the nodes within L - t hops, from the edges into them: the
  // padding, then prefixes of both halves (pairs are sorted by receiver, then sender depth).
  std::vector<at::Tensor> layer_sets;
  for (int t = 1; t <= hops; t++) {
    const int d = hops - t;
    int64_t nodes_t = 2, first = 1, second = 1;
    for (int64_t p = 2; p < num && node_depth[p] <= d; p++) nodes_t++;
    for (int64_t k = 0; k < pairs; k++) {
      const int dp = pair_depths[k] / 2, dq = dp + pair_depths[k] % 2;
      if (dp <= d) first++;
      if (dq <= d) second++;
    }
    at::Tensor edges = at::empty({first + second}, at::kLong);
    int64_t *e = edges.data_ptr<int64_t>();
    for (int64_t k = 0; k < first; k++) e[k] = k;
    for (int64_t k = 0; k < second; k++) e[first + k] = half + k;
    layer_sets.push_back(at::arange(nodes_t, at::kLong));
    layer_sets.push_back(edges);
  }

  const auto dev = c10::Device(device);
  std::vector<at::Tensor> inputs = {
      vectors.to(dev, double_precision ? at::kDouble : at::kFloat), species.to(dev),
      edge_index.to(dev), local.to(dev)};
  for (auto &tensor : layer_sets) inputs.push_back(tensor.to(dev));
  std::vector<at::Tensor> out;
  try {
    out = loader->run(inputs);
  } catch (std::exception &err) {
    error->one(FLERR, "pair_style mlip: the model failed on {} nodes and {} pairs ({})", num,
               half, first_line(err.what()));
  }
  const at::Tensor atomic = out[1].to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor grad = out[2].to(at::kCPU, at::kDouble).contiguous();
  const double *e = atomic.data_ptr<double>();
  const double *g = grad.data_ptr<double>();

  if (eflag_global) eng_vdwl += out[0].to(at::kCPU, at::kDouble).item<double>();
  if (eflag_atom)
    for (int i = 0; i < nlocal; i++) eatom[i] += e[2 + i];

  double **f = atom->f;
  for (int64_t k = 0; k < pairs; k++) {
    // dE/dr for the pair's vector r = x[j] - x[a]: its edge minus its mirror edge (edge
    // k + 1: edge 0 is the padding pair).
    const int64_t edge = k + 1;
    const double gx = g[3 * edge] - g[3 * (half + edge)];
    const double gy = g[3 * edge + 1] - g[3 * (half + edge) + 1];
    const double gz = g[3 * edge + 2] - g[3 * (half + edge) + 2];
    const int a = pair_atoms[2 * k], j = pair_atoms[2 * k + 1];
    f[a][0] += gx;
    f[a][1] += gy;
    f[a][2] += gz;
    f[j][0] -= gx;
    f[j][1] -= gy;
    f[j][2] -= gz;
    if (vflag_either) {
      const double rx = pair_vectors[3 * k], ry = pair_vectors[3 * k + 1],
                   rz = pair_vectors[3 * k + 2];
      const double w[6] = {-rx * gx,
                           -ry * gy,
                           -rz * gz,
                           -0.5 * (rx * gy + ry * gx),
                           -0.5 * (rx * gz + rz * gx),
                           -0.5 * (ry * gz + rz * gy)};
      if (vflag_global)
        for (int c = 0; c < 6; c++) virial[c] += w[c];
      if (vflag_atom)
        for (int c = 0; c < 6; c++) {
          vatom[a][c] += 0.5 * w[c];
          vatom[j][c] += 0.5 * w[c];
        }
    }
  }
}
