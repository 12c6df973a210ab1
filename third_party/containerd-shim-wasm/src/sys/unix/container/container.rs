use std::cell::RefCell;
use std::io::Error as IoError;
use std::mem::transmute;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, anyhow};
use containerd_shimkit::zygote::{WireError, Zygote};
use libcontainer::container::Container as YoukiContainer;
use libcontainer::signal::Signal;
use serde::Serialize;
use serde::de::DeserializeOwned;

thread_local! {
    // The youki's Container will live in a static inside the zygote process.
    // Reserve some space for it here.
    static CONTAINER: RefCell<Option<YoukiContainer>> = RefCell::default();
}

// wasmkube patch: the exposed container is a wrapper around the zygote process that built it,
// until the container is started. A started container needs no process of its own: its state is
// on disk (youki's `state.json` under its root), so each later call (kill, delete) loads it in a
// fresh zygote that exits with the call, as youki's own CLI does. An idle pod then keeps no
// resident zygote per container.
pub struct Container {
    builder: Mutex<Option<Zygote>>,
    root: PathBuf,
}

// Constructor methods
impl Container {
    pub fn build<Arg: Serialize + DeserializeOwned + 'static>(
        f: fn(Arg) -> anyhow::Result<YoukiContainer>,
        arg: Arg,
    ) -> anyhow::Result<Self> {
        let zygote = Zygote::global().spawn();
        let root = run_init(&zygote, f, arg)?;
        Ok(Container {
            builder: Mutex::new(Some(zygote)),
            root,
        })
    }
}

// Wrap the youki's Container methods that we use
impl Container {
    pub fn pid(&self) -> anyhow::Result<i32> {
        self.run(|c, _| Ok(c.pid().map(|pid| pid.as_raw())), ())?
            .context("Failed to obtain PID")
    }

    pub fn start(&self) -> anyhow::Result<()> {
        self.run(|c, _| Ok(c.start()?), ())?;
        // The builder is not needed anymore: SIGKILL and reap it (Zygote's drop).
        drop(
            self.builder
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        Ok(())
    }
    pub fn kill(&self, signal: u32) -> anyhow::Result<()> {
        self.run(
            |c, signal| {
                let signal = Signal::try_from(signal as i32).context("invalid signal number")?;
                Ok(c.kill(signal, true)?)
            },
            signal,
        )
    }
    pub fn delete(&self) -> anyhow::Result<()> {
        self.run(|c, _| Ok(c.delete(true)?), ())
    }
}

impl Container {
    /// Runs `f` on the container: in its builder while it has one, else in a fresh zygote that
    /// loads the container's state from its root.
    fn run<
        Arg: Serialize + DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned + 'static,
    >(
        &self,
        f: fn(&mut YoukiContainer, Arg) -> anyhow::Result<T>,
        arg: Arg,
    ) -> anyhow::Result<T> {
        let builder = self.builder.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(zygote) = builder.as_ref() {
            return run_impl(
                zygote,
                |c: &mut Option<YoukiContainer>, (f, arg): (usize, Arg)| -> anyhow::Result<T> {
                    let f: fn(&mut YoukiContainer, Arg) -> anyhow::Result<T> =
                        unsafe { transmute(f) };
                    let c = c.as_mut().expect("Container not initialized");
                    f(c, arg)
                },
                (f as usize, arg),
            );
        }
        drop(builder);
        // `spawn` panics when the clone fails (e.g. the node is out of PIDs): an error here.
        let zygote = std::panic::catch_unwind(|| Zygote::global().spawn())
            .map_err(|_| anyhow!("cannot start a process to reach the container"))?;
        run_impl(
            &zygote,
            |_: &mut Option<YoukiContainer>,
             (root, f, arg): (PathBuf, usize, Arg)|
             -> anyhow::Result<T> {
                let f: fn(&mut YoukiContainer, Arg) -> anyhow::Result<T> = unsafe { transmute(f) };
                let mut c = YoukiContainer::load(root)?;
                f(&mut c, arg)
            },
            (self.root.clone(), f as usize, arg),
        )
    }
}

fn run_impl<
    Arg: Serialize + DeserializeOwned + 'static,
    T: Serialize + DeserializeOwned + 'static,
>(
    zygote: &Zygote,
    f: fn(&mut Option<YoukiContainer>, Arg) -> anyhow::Result<T>,
    arg: Arg,
) -> anyhow::Result<T> {
    zygote
        .run(
            |(f, arg)| {
                let f: fn(&mut Option<YoukiContainer>, Arg) -> anyhow::Result<T> =
                    unsafe { transmute(f) };
                CONTAINER.with_borrow_mut(|c| -> Result<T, WireError> {
                    Ok(f(c, arg).map_err(IoError::other)?)
                })
            },
            (f as usize, arg),
        )
        .map_err(|e| anyhow!(e))
}

/// Builds the container in `zygote`, which keeps it; returns the container's root directory.
fn run_init<Arg: Serialize + DeserializeOwned + 'static>(
    zygote: &Zygote,
    f: fn(Arg) -> anyhow::Result<YoukiContainer>,
    arg: Arg,
) -> anyhow::Result<PathBuf> {
    run_impl(
        zygote,
        |c: &mut Option<YoukiContainer>, (f, arg): (usize, Arg)| -> anyhow::Result<PathBuf> {
            let f: fn(Arg) -> anyhow::Result<YoukiContainer> = unsafe { transmute(f) };
            let container = f(arg)?;
            let root = container.root.clone();
            *c = Some(container);
            Ok(root)
        },
        (f as usize, arg),
    )
}
