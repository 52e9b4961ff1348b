//! Per-VM state kept in step with [`Observation::vms`](crate::Observation::vms).
//!
//! The controller and the policies remember things about each VM between ticks. Keyed
//! maps (`BTreeMap<String, _>`) cost string comparisons and a name allocation per VM per
//! tick; in the simulator, where the controller runs millions of times, that dominated.
//! [`PerVm`] instead keeps the state in a `Vec` aligned index for index with the last
//! observation's VMs, so `state[i]` belongs to `obs.vms[i]`. It is rebuilt only when
//! the set of VMs changes, which costs one string comparison per VM to detect.

use crate::observation::VmSample;

/// State of type `T` for each VM of the last observation, in the same order.
#[derive(Clone, Debug, Default)]
pub struct PerVm<T> {
    names: Vec<String>,
    items: Vec<T>,
}

impl<T> PerVm<T> {
    pub fn new() -> PerVm<T> {
        PerVm {
            names: Vec::new(),
            items: Vec::new(),
        }
    }

    /// Whether `vms` are the VMs of the last [`PerVm::sync`], in the same order.
    pub fn matches(&self, vms: &[VmSample]) -> bool {
        self.names.len() == vms.len() && self.names.iter().zip(vms).all(|(n, v)| *n == v.name)
    }

    /// Aligns the state with `vms`, which must be sorted by name: VMs still present keep
    /// their state, departed ones are forgotten, new ones get `adopt(vm)`.
    pub fn sync(&mut self, vms: &[VmSample], mut adopt: impl FnMut(&VmSample) -> T) {
        if self.matches(vms) {
            return;
        }
        let mut old: Vec<Option<T>> = std::mem::take(&mut self.items)
            .into_iter()
            .map(Some)
            .collect();
        let old_names = std::mem::take(&mut self.names);
        for vm in vms {
            // `old_names` is sorted too (it was an earlier `vms`).
            let kept = old_names
                .binary_search_by(|n| n.as_str().cmp(&vm.name))
                .ok()
                .and_then(|k| old[k].take());
            self.items.push(kept.unwrap_or_else(|| adopt(vm)));
            self.names.push(vm.name.clone());
        }
    }

    /// The state of the VM named `name`, if it was in the last observation.
    pub fn get(&self, name: &str) -> Option<&T> {
        let k = self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()?;
        self.items.get(k)
    }

    /// (name, state) in observation order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.names.iter().map(String::as_str).zip(&self.items)
    }
}

impl<T> std::ops::Index<usize> for PerVm<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.items[i]
    }
}

impl<T> std::ops::IndexMut<usize> for PerVm<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.items[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Bytes;

    fn vms(names: &[&str]) -> Vec<VmSample> {
        names
            .iter()
            .map(|n| VmSample::new(*n, Bytes::gib(1), Bytes::gib(1)))
            .collect()
    }

    #[test]
    fn keeps_state_of_vms_that_stay() {
        let mut s: PerVm<String> = PerVm::new();
        s.sync(&vms(&["a", "c"]), |v| format!("{}0", v.name));
        s[1].push('!');
        s.sync(&vms(&["a", "c"]), |_| unreachable!("same VMs"));
        s.sync(&vms(&["b", "c", "d"]), |v| format!("{}1", v.name));
        let all: Vec<(&str, &String)> = s.iter().collect();
        assert_eq!(
            all,
            [
                ("b", &"b1".to_string()),
                ("c", &"c0!".to_string()),
                ("d", &"d1".to_string())
            ]
        );
        assert_eq!(s.get("c").map(String::as_str), Some("c0!"));
        assert_eq!(s.get("a"), None);
    }
}
