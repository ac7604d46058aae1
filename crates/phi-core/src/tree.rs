//! The module tree under HF's checkpoint names — stated once.
//!
//! As in `transformers` (and candle's `VarBuilder::pp`), the module tree *is* the state dict:
//! every module lists its parts under their HF names in one [`Listing`] — written once with
//! [`listing!`], which stamps it out for `&M` and `&mut M`. Everything that needs a key derives
//! it from there: loading ([`PhiForCausalLM::load`](crate::PhiForCausalLM::load) fills the
//! listed parameters), saving ([`PhiForCausalLM::state_dict`](crate::PhiForCausalLM::state_dict)),
//! adapter targeting ([`PhiForCausalLM::linears_mut`](crate::PhiForCausalLM::linears_mut)) and the
//! optimizer's parameter groups ([`PhiForCausalLM::named_params`](crate::PhiForCausalLM::named_params)).
//!
//! The listing stops at the [`Leaf`] modules that hold parameters — [`Linear`], [`Norm`],
//! [`Embedding`] — each of which lists its own tensors (`weight`, `bias`) with their [`Role`].

use burn::module::Param;
use burn::tensor::Tensor;

use crate::nn::{Embedding, Linear, Norm};

/// What a parameter is, beyond its key: how it is laid out in the checkpoint and initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A projection's weight: held `[in, out]`, the transpose of HF's `[out, in]`; normal(0, std).
    Projection,
    /// The token embedding table `[vocab, hidden]`; normal(0, std).
    Embedding,
    /// A bias (of a projection or a LayerNorm); zeros.
    Bias,
    /// A norm's scale; ones.
    Scale,
}

/// A parameter, 2-D (matrices) or 1-D (biases, norm scales).
#[derive(Debug, Clone, Copy)]
pub enum ParamRef<'a> {
    Matrix(&'a Param<Tensor<2>>),
    Vector(&'a Param<Tensor<1>>),
}

/// A parameter to replace in place (see [`ParamRef`]).
#[derive(Debug)]
pub enum ParamMut<'a> {
    Matrix(&'a mut Param<Tensor<2>>),
    Vector(&'a mut Param<Tensor<1>>),
}

impl ParamRef<'_> {
    pub fn id(&self) -> burn::module::ParamId {
        match self {
            ParamRef::Matrix(p) => p.id,
            ParamRef::Vector(p) => p.id,
        }
    }

    /// 2 for a matrix, 1 for a vector.
    pub fn rank(&self) -> usize {
        match self {
            ParamRef::Matrix(_) => 2,
            ParamRef::Vector(_) => 1,
        }
    }
}

/// A module that holds parameters itself, under its HF key prefix.
#[derive(Debug, Clone, Copy)]
pub enum Leaf<'a> {
    Linear(&'a Linear),
    Norm(&'a Norm),
    Embedding(&'a Embedding),
    /// A head tied to the embedding table: nothing of its own, though some exports carry a copy
    /// of the table under its key (loading ignores it).
    Tied,
}

/// A leaf module to change in place (see [`Leaf`]).
#[derive(Debug)]
pub enum LeafMut<'a> {
    Linear(&'a mut Linear),
    Norm(&'a mut Norm),
    Embedding(&'a mut Embedding),
    Tied,
}

/// Lists the leaf modules of a module under their full HF key prefixes (`key` is the module's
/// own), in checkpoint order. Implemented for `&M` (yielding [`Leaf`]) and `&mut M` (yielding
/// [`LeafMut`]) by [`listing!`] from one body; also for `Option` (absent parts list nothing) and
/// `Vec` (item `i` under `key.i`).
pub trait Listing<'a, T> {
    fn list(self, key: &str, out: &mut Vec<(String, T)>);
}

/// Lists a leaf module's parameters under their names (`weight`, `bias`) with their [`Role`].
/// Implemented for `&L` (yielding [`ParamRef`]) and `&mut L` (yielding [`ParamMut`]) from one
/// body by [`params!`].
pub trait Params<'a, P> {
    fn params(self, out: &mut Vec<(&'static str, Role, P)>);
}

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// Lists `part` under `prefix.name`.
pub fn part<'a, T, N: Listing<'a, T>>(out: &mut Vec<(String, T)>, prefix: &str, name: &str, part: N) {
    part.list(&join(prefix, name), out)
}

/// Lists a parameter under `name` (nothing for an absent optional one).
pub fn param<P, T: IntoParam<P>>(out: &mut Vec<(&'static str, Role, P)>, name: &'static str, role: Role, p: T) {
    if let Some(p) = p.into_param() {
        out.push((name, role, p));
    }
}

impl<'a, T, N> Listing<'a, T> for &'a Option<N>
where
    &'a N: Listing<'a, T>,
{
    fn list(self, key: &str, out: &mut Vec<(String, T)>) {
        if let Some(n) = self {
            n.list(key, out)
        }
    }
}

impl<'a, T, N> Listing<'a, T> for &'a mut Option<N>
where
    &'a mut N: Listing<'a, T>,
{
    fn list(self, key: &str, out: &mut Vec<(String, T)>) {
        if let Some(n) = self {
            n.list(key, out)
        }
    }
}

impl<'a, T, N> Listing<'a, T> for &'a Vec<N>
where
    &'a N: Listing<'a, T>,
{
    fn list(self, key: &str, out: &mut Vec<(String, T)>) {
        for (i, n) in self.iter().enumerate() {
            n.list(&join(key, &i.to_string()), out)
        }
    }
}

impl<'a, T, N> Listing<'a, T> for &'a mut Vec<N>
where
    &'a mut N: Listing<'a, T>,
{
    fn list(self, key: &str, out: &mut Vec<(String, T)>) {
        for (i, n) in self.iter_mut().enumerate() {
            n.list(&join(key, &i.to_string()), out)
        }
    }
}

/// A parameter field as listed: `&Param`, `&Option<Param>` (absent: not listed) or their `&mut`.
pub trait IntoParam<P> {
    fn into_param(self) -> Option<P>;
}

impl<'a> IntoParam<ParamRef<'a>> for &'a Param<Tensor<2>> {
    fn into_param(self) -> Option<ParamRef<'a>> {
        Some(ParamRef::Matrix(self))
    }
}
impl<'a> IntoParam<ParamRef<'a>> for &'a Param<Tensor<1>> {
    fn into_param(self) -> Option<ParamRef<'a>> {
        Some(ParamRef::Vector(self))
    }
}
impl<'a> IntoParam<ParamRef<'a>> for &'a Option<Param<Tensor<1>>> {
    fn into_param(self) -> Option<ParamRef<'a>> {
        self.as_ref().map(ParamRef::Vector)
    }
}
impl<'a> IntoParam<ParamMut<'a>> for &'a mut Param<Tensor<2>> {
    fn into_param(self) -> Option<ParamMut<'a>> {
        Some(ParamMut::Matrix(self))
    }
}
impl<'a> IntoParam<ParamMut<'a>> for &'a mut Param<Tensor<1>> {
    fn into_param(self) -> Option<ParamMut<'a>> {
        Some(ParamMut::Vector(self))
    }
}
impl<'a> IntoParam<ParamMut<'a>> for &'a mut Option<Param<Tensor<1>>> {
    fn into_param(self) -> Option<ParamMut<'a>> {
        self.as_mut().map(ParamMut::Vector)
    }
}

/// Implements [`Listing`] for `&$ty` and `&mut $ty` from one body, in which `$this` is the
/// module (destructure it: fields then bind by reference of the right kind), `$key` its key and
/// `$out` the list to extend with [`part`].
macro_rules! listing {
    ($ty:ty, |$this:ident, $key:ident, $out:ident| $body:block) => {
        impl<'a> $crate::tree::Listing<'a, $crate::tree::Leaf<'a>> for &'a $ty {
            fn list(self, $key: &str, $out: &mut Vec<(String, $crate::tree::Leaf<'a>)>) {
                let $this = self;
                $body
            }
        }
        impl<'a> $crate::tree::Listing<'a, $crate::tree::LeafMut<'a>> for &'a mut $ty {
            fn list(self, $key: &str, $out: &mut Vec<(String, $crate::tree::LeafMut<'a>)>) {
                let $this = self;
                $body
            }
        }
    };
}
pub(crate) use listing;

/// Implements [`Params`] for `&$ty` and `&mut $ty` from one body (see [`listing!`]), and
/// [`Listing`] — the leaf lists itself as `$variant`.
macro_rules! params {
    ($ty:ident, |$this:ident, $out:ident| $body:block) => {
        impl<'a> $crate::tree::Params<'a, $crate::tree::ParamRef<'a>> for &'a $ty {
            fn params(self, $out: &mut Vec<(&'static str, $crate::tree::Role, $crate::tree::ParamRef<'a>)>) {
                let $this = self;
                $body
            }
        }
        impl<'a> $crate::tree::Params<'a, $crate::tree::ParamMut<'a>> for &'a mut $ty {
            fn params(self, $out: &mut Vec<(&'static str, $crate::tree::Role, $crate::tree::ParamMut<'a>)>) {
                let $this = self;
                $body
            }
        }
        impl<'a> $crate::tree::Listing<'a, $crate::tree::Leaf<'a>> for &'a $ty {
            fn list(self, key: &str, out: &mut Vec<(String, $crate::tree::Leaf<'a>)>) {
                out.push((key.to_string(), $crate::tree::Leaf::$ty(self)));
            }
        }
        impl<'a> $crate::tree::Listing<'a, $crate::tree::LeafMut<'a>> for &'a mut $ty {
            fn list(self, key: &str, out: &mut Vec<(String, $crate::tree::LeafMut<'a>)>) {
                out.push((key.to_string(), $crate::tree::LeafMut::$ty(self)));
            }
        }
    };
}
pub(crate) use params;

impl<'a> Leaf<'a> {
    /// The module's parameters under their names, with their roles (none for [`Leaf::Tied`]).
    pub fn params(self) -> Vec<(&'static str, Role, ParamRef<'a>)> {
        let mut out = Vec::new();
        match self {
            Leaf::Linear(m) => m.params(&mut out),
            Leaf::Norm(m) => m.params(&mut out),
            Leaf::Embedding(m) => m.params(&mut out),
            Leaf::Tied => {}
        }
        out
    }
}

impl<'a> LeafMut<'a> {
    /// The same leaf, borrowed for less long: to fill its parameters and use it afterwards.
    pub fn reborrow(&mut self) -> LeafMut<'_> {
        match self {
            LeafMut::Linear(m) => LeafMut::Linear(m),
            LeafMut::Norm(m) => LeafMut::Norm(m),
            LeafMut::Embedding(m) => LeafMut::Embedding(m),
            LeafMut::Tied => LeafMut::Tied,
        }
    }

    /// The module's parameters under their names, with their roles (none for [`LeafMut::Tied`]).
    pub fn params(self) -> Vec<(&'static str, Role, ParamMut<'a>)> {
        let mut out = Vec::new();
        match self {
            LeafMut::Linear(m) => m.params(&mut out),
            LeafMut::Norm(m) => m.params(&mut out),
            LeafMut::Embedding(m) => m.params(&mut out),
            LeafMut::Tied => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use burn::module::{Module, ModuleVisitor, Param, ParamId};
    use burn::tensor::{Device, Tensor};

    use super::{Leaf, Role};
    use crate::nn::param_id;
    use crate::{PhiConfig, PhiForCausalLM};

    /// Every layout the listing branches on: both families, qk-layernorm, GQA, a tied head.
    fn layouts() -> Vec<(&'static str, PhiConfig)> {
        let phi = PhiConfig::phi_family(32, 2, 4, 64, 0.5);
        let phi3 = PhiConfig::phi3_family(32, 2, 4, 2, 48, 64);
        vec![
            ("phi", phi.clone()),
            ("phi qk-layernorm", PhiConfig { qk_layernorm: true, ..phi }),
            ("phi3 gqa", phi3.clone()),
            ("phi3 tied", PhiConfig { tie_word_embeddings: true, ..phi3 }),
        ]
    }

    /// Every parameter burn's derived `Module` visits, by id, with its rank.
    fn module_params(model: &PhiForCausalLM) -> BTreeMap<ParamId, usize> {
        struct Ids(BTreeMap<ParamId, usize>);
        impl ModuleVisitor for Ids {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                assert!(self.0.insert(p.id, D).is_none(), "a parameter visited twice");
            }
        }
        let mut ids = Ids(BTreeMap::new());
        model.visit(&mut ids);
        ids.0
    }

    #[test]
    fn the_listing_covers_every_parameter_once_under_the_key_its_id_comes_from() {
        for (name, config) in layouts() {
            let model = PhiForCausalLM::init(config, &Device::default(), 1).unwrap();
            let listed = model.named_params();
            let keys: BTreeSet<&str> = listed.iter().map(|(k, _, _)| k.as_str()).collect();
            assert_eq!(keys.len(), listed.len(), "{name}: a key listed twice");
            // The listing is the module tree: exactly the parameters burn's derive visits.
            let ids: BTreeMap<ParamId, usize> = listed.iter().map(|(_, _, p)| (p.id(), p.rank())).collect();
            assert_eq!(ids, module_params(&model), "{name}");
            for (key, role, p) in &listed {
                assert_eq!(p.id(), param_id(key), "{name}: {key}'s id is derived from its key");
                let expected_rank = if matches!(role, Role::Projection | Role::Embedding) { 2 } else { 1 };
                assert_eq!(p.rank(), expected_rank, "{name}: {key} is a {role:?}");
            }
            // Saving writes exactly the listed keys, in listing order.
            let saved: Vec<String> = model.state_dict().tensors.into_iter().map(|(k, _)| k).collect();
            assert_eq!(saved, listed.iter().map(|(k, _, _)| k.clone()).collect::<Vec<_>>(), "{name}");
        }
    }

    #[test]
    fn the_listing_spells_hf_keys() {
        let model = PhiForCausalLM::init(layouts()[1].1.clone(), &Device::default(), 1).unwrap();
        let keys: Vec<String> = model.named_params().into_iter().map(|(k, _, _)| k).collect();
        let layer0: Vec<&str> =
            keys.iter().filter_map(|k| k.strip_prefix("model.layers.0.")).collect();
        assert_eq!(
            layer0,
            [
                "input_layernorm.weight", "input_layernorm.bias",
                "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
                "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.dense.weight", "self_attn.dense.bias",
                "self_attn.q_layernorm.weight", "self_attn.q_layernorm.bias",
                "self_attn.k_layernorm.weight", "self_attn.k_layernorm.bias",
                "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
            ]
        );
        assert_eq!(keys.first().map(String::as_str), Some("model.embed_tokens.weight"));
        assert_eq!(&keys[keys.len() - 4..], ["model.final_layernorm.weight", "model.final_layernorm.bias", "lm_head.weight", "lm_head.bias"]);

        let model = PhiForCausalLM::init(layouts()[3].1.clone(), &Device::default(), 1).unwrap();
        let leaves: Vec<String> = model.leaves().into_iter().map(|(k, _)| k).collect();
        let layer1: Vec<&str> = leaves.iter().filter_map(|k| k.strip_prefix("model.layers.1.")).collect();
        assert_eq!(layer1, ["input_layernorm", "post_attention_layernorm", "self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]);
        assert_eq!(&leaves[leaves.len() - 2..], ["model.norm", "lm_head"]);
        assert!(matches!(model.leaves().last(), Some((_, Leaf::Tied))), "a tied head is listed, holding nothing");
    }

    #[test]
    fn linears_mut_are_the_listed_projections() {
        for (name, config) in layouts() {
            let mut model = PhiForCausalLM::init(config, &Device::default(), 1).unwrap();
            let projections: Vec<String> = model
                .named_params()
                .into_iter()
                .filter(|(_, role, _)| *role == Role::Projection)
                .map(|(k, _, _)| k.strip_suffix(".weight").unwrap().to_string())
                .collect();
            let linears: Vec<String> = model.linears_mut().into_iter().map(|(k, _)| k).collect();
            assert_eq!(linears, projections, "{name}");
        }
    }
}
