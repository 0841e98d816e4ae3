/* pair_style mlip: mlip models in LAMMPS through an AOTInductor package.
 *
 * The package (written by `mlip export lammps MODEL.pt -o MODEL.pt2`) maps a graph
 * (edge vectors, species, edge index, a mask of the nodes whose energy this rank owns, the
 * nodes every layer computes and the edges into them) to per-node energies and the
 * derivative of the energy of all ranks with respect to every edge vector. This file
 * builds that graph from LAMMPS's atoms, runs the ghost exchange the package asks for
 * between layers, and turns the derivatives into forces and virial.
 *
 * Domain decomposition: every layer of the model computes only this rank's own atoms,
 * from the edges into them. The features of the ghost atoms within one cutoff, which the
 * next layer reads, come from the ranks that own them: the package calls the operator
 * mlip_lammps::ghost_exchange (registered below), which is a LAMMPS forward communication
 * of one feature row per atom; its gradient, mlip_lammps::ghost_exchange_backward, is the
 * reverse communication that adds the ghosts' feature gradients to their owners'. So the
 * ghost shell is LAMMPS's default (cutoff + skin) for any number of layers, and no rank
 * computes another rank's atoms. Nodes of the graph are atoms by ID: every image of one
 * atom on this rank (a periodic image, or the local atom's own ghost copies in a small
 * box) is one node, so a periodic box on one rank has exactly its own atoms as nodes, the
 * same edges as mlip's own neighbour list, and nothing to exchange. The nodes are the local
 * atoms, then the ghosts they neighbour; the pairs are every pair within the cutoff with a
 * local atom in it, once, with its mirror (the package expects mirrored order), those of
 * two local atoms first, so that the edges into local atoms are a prefix of each half.
 * Each pair's force acts on the two atoms (images) it joins, so forces on ghosts are
 * reverse-communicated by LAMMPS (newton_pair on) and the virial is the sum over pairs of
 * -r_ij (x) dE/dr_ij, split evenly between the two atoms for per-atom virials. The same
 * graph, in Python: mlip/integrations/lammps/graph.py.
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
#include <torch/library.h>

#include <cstring>
#include <sstream>
#include <stdexcept>

using namespace LAMMPS_NS;

namespace {

constexpr const char *PACKAGE_FORMAT = "3";

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

// The operators the package calls between layers (mlip/integrations/lammps/exchange.py has
// their Python definitions, used for tracing; the schemas must stay the same).
at::Tensor ghost_exchange(const at::Tensor &x, const at::Tensor &nodes, const at::Tensor &like)
{
  if (!PairMLIP::computing)
    throw std::runtime_error("mlip_lammps::ghost_exchange called outside pair_style mlip");
  return PairMLIP::computing->exchange_forward(x, nodes.size(0), like.size(0));
}

at::Tensor ghost_exchange_backward(const at::Tensor &grad, const at::Tensor &nodes)
{
  if (!PairMLIP::computing)
    throw std::runtime_error("mlip_lammps::ghost_exchange_backward called outside pair_style mlip");
  return PairMLIP::computing->exchange_backward(grad, nodes.size(0));
}

}    // namespace

TORCH_LIBRARY(mlip_lammps, m)
{
  m.def("ghost_exchange(Tensor x, Tensor nodes, Tensor like) -> Tensor");
  m.def("ghost_exchange_backward(Tensor grad, Tensor nodes) -> Tensor");
}

TORCH_LIBRARY_IMPL(mlip_lammps, CompositeExplicitAutograd, m)
{
  m.impl("ghost_exchange", &ghost_exchange);
  m.impl("ghost_exchange_backward", &ghost_exchange_backward);
}

PairMLIP *PairMLIP::computing = nullptr;

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
  memory->destroy(uncertainty);
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void *PairMLIP::extract_peratom(const char *name, int &ncol)
{
  if (strcmp(name, "uncertainty") != 0) return nullptr;
  if (!has_uncertainty)
    error->all(FLERR,
               "pair_style mlip: {} has no uncertainty (train with training.uncertainty: llpr, "
               "then export again)",
               package_path);
  if (atom->nmax > uncertainty_size) {    // asked before the first compute()
    uncertainty_size = atom->nmax;
    memory->destroy(uncertainty);
    memory->create(uncertainty, uncertainty_size, "pair:uncertainty");
    for (int i = 0; i < uncertainty_size; i++) uncertainty[i] = 0.0;
  }
  ncol = 0;
  return (void *) uncertainty;
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
  for (const char *key : {"elements", "cutoff", "hops", "exchange_width", "dtype", "device"})
    if (meta.count(key) == 0)
      error->all(FLERR, "pair_coeff mlip: {} lacks the metadata key '{}'", package_path, key);

  elements.clear();
  std::istringstream names(meta["elements"]);
  for (std::string name; names >> name;) elements.push_back(name);
  cutoff = std::stod(meta["cutoff"]);
  hops = std::stoi(meta["hops"]);
  exchange_width = std::stoi(meta["exchange_width"]);
  double_precision = meta["dtype"] == "float64";
  device = meta["device"];
  has_uncertainty = meta.count("uncertainty") && meta["uncertainty"] == "llpr";

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
    loader_full = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package_path, "full");
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

  // The next layer reads the features of the ghosts within one cutoff of a local atom: the
  // ghost shell LAMMPS always keeps (at least the pair cutoff plus the skin) holds them, and
  // the exchange carries one row of at most exchange_width values per atom.
  comm_forward = comm_reverse = exchange_width;
  neighbor->add_request(this, NeighConst::REQ_FULL);
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
  // The ghosts the local atoms neighbour: the first image of an atom reached is its node's
  // representative.
  for (int i = 0; i < nlocal; i++) {
    neighbours_of(i, [&](int j, double, double, double) {
      if (node_of_tag.emplace(tag[j], (int) node_atom.size()).second) {
        node_atom.push_back(j);
        node_depth.push_back(1);
      }
    });
  }

  // Pairs: every pair with a local atom in it, once, the local atom (the lower node id
  // for two local atoms) as receiver; those between two local atoms first.
  std::vector<int> ghost_atoms, ghost_nodes;
  std::vector<double> ghost_vectors;
  pair_atoms.clear();
  pair_nodes.clear();
  pair_vectors.clear();
  for (int i = 0; i < nlocal; i++) {
    const int p = 2 + i;
    neighbours_of(i, [&](int j, double dx, double dy, double dz) {
      const int q = node_of_tag.find(tag[j])->second;
      if (node_depth[q] == 0) {    // found from q's side too: keep one direction
        if (q < p) return;
        if (q == p && !positive(dx, dy, dz)) return;
        pair_atoms.insert(pair_atoms.end(), {i, j});
        pair_nodes.insert(pair_nodes.end(), {p, q});
        pair_vectors.insert(pair_vectors.end(), {dx, dy, dz});
      } else {
        ghost_atoms.insert(ghost_atoms.end(), {i, j});
        ghost_nodes.insert(ghost_nodes.end(), {p, q});
        ghost_vectors.insert(ghost_vectors.end(), {dx, dy, dz});
      }
    });
  }
  local_pairs = (int64_t) pair_nodes.size() / 2;
  pair_atoms.insert(pair_atoms.end(), ghost_atoms.begin(), ghost_atoms.end());
  pair_nodes.insert(pair_nodes.end(), ghost_nodes.begin(), ghost_nodes.end());
  pair_vectors.insert(pair_vectors.end(), ghost_vectors.begin(), ghost_vectors.end());
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

  // Every layer computes the padding and the local atoms (the first nodes), from the edges
  // into them: the padding pair and all pairs in the first half (their receivers are
  // local), the padding pair and the pairs between local atoms in the second.
  const int64_t computed = 2 + nlocal;
  const int64_t first = half, second = 1 + local_pairs;
  at::Tensor edges = at::empty({first + second}, at::kLong);
  int64_t *e_in = edges.data_ptr<int64_t>();
  for (int64_t k = 0; k < first; k++) e_in[k] = k;
  for (int64_t k = 0; k < second; k++) e_in[first + k] = half + k;

  const auto dev = c10::Device(device);
  std::vector<at::Tensor> inputs = {
      vectors.to(dev, double_precision ? at::kDouble : at::kFloat), species.to(dev),
      edge_index.to(dev), local.to(dev), at::arange(computed, at::kLong).to(dev), edges.to(dev)};
  std::vector<at::Tensor> out;
  computing = this;
  try {
    // without ghost nodes (one rank), every node is computed: the twin without active sets
    out = (num == computed ? loader_full : loader)->run(inputs);
  } catch (std::exception &err) {
    computing = nullptr;
    error->one(FLERR, "pair_style mlip: the model failed on {} nodes and {} pairs ({})", num,
               half, first_line(err.what()));
  }
  computing = nullptr;
  const at::Tensor atomic = out[1].to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor grad = out[2].to(at::kCPU, at::kDouble).contiguous();
  const double *e = atomic.data_ptr<double>();
  const double *g = grad.data_ptr<double>();

  if (eflag_global) eng_vdwl += out[0].to(at::kCPU, at::kDouble).item<double>();
  if (eflag_atom)
    for (int i = 0; i < nlocal; i++) eatom[i] += e[2 + i];
  if (has_uncertainty && out.size() > 3) {
    if (atom->nmax > uncertainty_size) {
      uncertainty_size = atom->nmax;
      memory->destroy(uncertainty);
      memory->create(uncertainty, uncertainty_size, "pair:uncertainty");
    }
    const at::Tensor u = out[3].to(at::kCPU, at::kDouble).contiguous();
    const double *uu = u.data_ptr<double>();
    for (int i = 0; i < nlocal; i++) uncertainty[i] = uu[2 + i];
  }

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

/* ---------------------------------------------------------------------------------------
   Ghost exchange. Rows 0 and 1 of the package's node tensors are the padding, rows 2 ...
   2 + nlocal - 1 the local atoms, the rest the ghost nodes (node_atom: one ghost atom each).
   On one rank every atom is local and there is nothing to exchange.
------------------------------------------------------------------------------------------ */

at::Tensor PairMLIP::exchange_forward(const at::Tensor &x, int64_t computed, int64_t total)
{
  const int nlocal = atom->nlocal;
  if (computed != 2 + nlocal || x.size(0) != computed || total != (int64_t) node_atom.size())
    throw std::runtime_error("ghost exchange of a tensor that does not match the graph");
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = total;
  if (comm->nprocs == 1) {
    if (total != computed)
      throw std::runtime_error("ghost nodes on a single rank (a node of an unknown atom ID)");
    return x.clone(at::MemoryFormat::Contiguous);    // the layout the package expects
  }
  const at::Tensor rows = x.to(at::kCPU, at::kDouble).contiguous().reshape({computed, -1});
  const int64_t width = rows.size(1);
  if (width > exchange_width)
    throw std::runtime_error("ghost exchange wider than the package's exchange_width");
  exchange_stride = (int) width;
  exchange_buffer.resize((size_t) (nlocal + atom->nghost) * width);
  const double *src = rows.data_ptr<double>();
  std::memcpy(exchange_buffer.data(), src + 2 * width, sizeof(double) * nlocal * width);
  comm->forward_comm(this, exchange_stride);

  at::Tensor out = at::empty({total, width}, at::kDouble);
  double *dst = out.data_ptr<double>();
  std::memcpy(dst, src, sizeof(double) * computed * width);
  for (int64_t p = computed; p < total; p++)
    std::memcpy(dst + p * width, exchange_buffer.data() + (size_t) node_atom[p] * width,
                sizeof(double) * width);
  return out.reshape(shape).to(x.options());
}

at::Tensor PairMLIP::exchange_backward(const at::Tensor &grad, int64_t computed)
{
  const int nlocal = atom->nlocal;
  const int64_t total = grad.size(0);
  if (computed != 2 + nlocal || total != (int64_t) node_atom.size())
    throw std::runtime_error("ghost exchange gradient that does not match the graph");
  std::vector<int64_t> shape = grad.sizes().vec();
  shape[0] = computed;
  if (comm->nprocs == 1) return grad.narrow(0, 0, computed).clone(at::MemoryFormat::Contiguous);
  const at::Tensor rows = grad.to(at::kCPU, at::kDouble).contiguous().reshape({total, -1});
  const int64_t width = rows.size(1);
  if (width > exchange_width)
    throw std::runtime_error("ghost exchange wider than the package's exchange_width");
  exchange_stride = (int) width;
  exchange_buffer.assign((size_t) (nlocal + atom->nghost) * width, 0.0);
  const double *src = rows.data_ptr<double>();
  for (int64_t p = computed; p < total; p++)
    std::memcpy(exchange_buffer.data() + (size_t) node_atom[p] * width, src + p * width,
                sizeof(double) * width);
  comm->reverse_comm(this, exchange_stride);

  at::Tensor out = rows.narrow(0, 0, computed).clone();
  double *dst = out.data_ptr<double>() + 2 * width;
  const double *sum = exchange_buffer.data();
  for (int64_t k = 0; k < (int64_t) nlocal * width; k++) dst[k] += sum[k];
  return out.reshape(shape).to(grad.options());
}

int PairMLIP::pack_forward_comm(int n, int *list, double *buf, int /*pbc_flag*/, int * /*pbc*/)
{
  const int w = exchange_stride;
  for (int k = 0; k < n; k++)
    std::memcpy(buf + (size_t) k * w, exchange_buffer.data() + (size_t) list[k] * w,
                sizeof(double) * w);
  return n * w;
}

void PairMLIP::unpack_forward_comm(int n, int first, double *buf)
{
  const int w = exchange_stride;
  std::memcpy(exchange_buffer.data() + (size_t) first * w, buf, sizeof(double) * n * w);
}

int PairMLIP::pack_reverse_comm(int n, int first, double *buf)
{
  const int w = exchange_stride;
  std::memcpy(buf, exchange_buffer.data() + (size_t) first * w, sizeof(double) * n * w);
  return n * w;
}

void PairMLIP::unpack_reverse_comm(int n, int *list, double *buf)
{
  const int w = exchange_stride;
  for (int k = 0; k < n; k++) {
    double *row = exchange_buffer.data() + (size_t) list[k] * w;
    for (int c = 0; c < w; c++) row[c] += buf[(size_t) k * w + c];
  }
}
