//! Small dense linear algebra on 4x4 / 3x3 float64 matrices, in LAPACK's operation order where MONAI's
//! numpy calls feed resampling (so axis-aligned cases come out exact, as they do in numpy).

pub type Mat4 = [[f64; 4]; 4];
pub type Mat3 = [[f64; 3]; 3];

pub const IDENTITY: Mat4 = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// `a @ b`, each entry accumulated from 0 over k ascending (BLAS order; zeros then add exactly).
pub fn matmul4(a: &Mat4, b: &Mat4) -> Mat4 {
    let mut c = [[0.0; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            let mut acc = 0.0;
            for k in 0..4 {
                acc += a[i][k] * b[k][j];
            }
            c[i][j] = acc;
        }
    }
    c
}

pub fn matmul3(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            let mut acc = 0.0;
            for k in 0..3 {
                acc += a[i][k] * b[k][j];
            }
            c[i][j] = acc;
        }
    }
    c
}

pub fn transpose3(a: &Mat3) -> Mat3 {
    let mut t = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            t[i][j] = a[j][i];
        }
    }
    t
}

pub fn rzs(a: &Mat4) -> Mat3 {
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        r[i].copy_from_slice(&a[i][..3]);
    }
    r
}

/// `solve(a, b)` = a⁻¹ b by LU with partial pivoting (dgesv), `None` when singular.
pub fn solve4(a: &Mat4, b: &Mat4) -> Option<Mat4> {
    let mut lu = *a;
    let mut x = *b;
    for k in 0..4 {
        let mut p = k;
        for i in k + 1..4 {
            if lu[i][k].abs() > lu[p][k].abs() {
                p = i;
            }
        }
        if lu[p][k] == 0.0 || !lu[p][k].is_finite() {
            return None;
        }
        lu.swap(k, p);
        x.swap(k, p);
        for i in k + 1..4 {
            let l = lu[i][k] / lu[k][k];
            if l != 0.0 {
                for j in k..4 {
                    lu[i][j] -= l * lu[k][j];
                }
                for j in 0..4 {
                    x[i][j] -= l * x[k][j];
                }
            }
        }
    }
    // Back substitution column by column, as dtrsm does: divide, then eliminate upwards.
    for j in 0..4 {
        for k in (0..4).rev() {
            if x[k][j] != 0.0 {
                x[k][j] /= lu[k][k];
                for i in 0..k {
                    x[i][j] -= x[k][j] * lu[i][k];
                }
            }
        }
    }
    Some(x)
}

pub fn inv3(a: &Mat3) -> Option<Mat3> {
    let det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            let (i1, i2) = ((j + 1) % 3, (j + 2) % 3);
            let (j1, j2) = ((i + 1) % 3, (i + 2) % 3);
            r[i][j] = (a[i1][j1] * a[i2][j2] - a[i1][j2] * a[i2][j1]) / det;
        }
    }
    Some(r)
}

/// Lower Cholesky factor of a symmetric positive definite 3x3, `None` if not positive definite.
pub fn cholesky3(a: &Mat3) -> Option<Mat3> {
    let mut l = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..=i {
            let mut s = a[i][j];
            for k in 0..j {
                s -= l[i][k] * l[j][k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i][j] = s.sqrt();
            } else {
                l[i][j] = s / l[j][j];
            }
        }
    }
    Some(l)
}

/// Column norms of the 3x3 part: MONAI's `affine_to_spacing`.
pub fn spacing_of(a: &Mat4) -> [f64; 3] {
    let mut s = [0.0; 3];
    for (j, v) in s.iter_mut().enumerate() {
        *v = (a[0][j] * a[0][j] + a[1][j] * a[1][j] + a[2][j] * a[2][j]).sqrt();
    }
    s
}

/// numpy's `allclose(a, b, rtol, atol)`: |a - b| <= atol + rtol * |b| everywhere.
pub fn allclose4(a: &Mat4, b: &Mat4, rtol: f64, atol: f64) -> bool {
    (0..4).all(|i| (0..4).all(|j| (a[i][j] - b[i][j]).abs() <= atol + rtol * b[i][j].abs()))
}

/// Orthogonal polar factor of a non-singular 3x3 (Newton iteration X ← (X + X⁻ᵀ)/2), what nibabel's
/// `io_orientation` gets from its SVD.
pub fn polar3(a: &Mat3) -> Option<Mat3> {
    let mut x = *a;
    for _ in 0..100 {
        let inv = inv3(&x)?;
        let it = transpose3(&inv);
        let mut next = [[0.0; 3]; 3];
        let mut delta: f64 = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                next[i][j] = 0.5 * (x[i][j] + it[i][j]);
                delta = delta.max((next[i][j] - x[i][j]).abs());
            }
        }
        x = next;
        if delta < 1e-15 {
            break;
        }
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_is_the_length_of_each_affine_column() {
        // A rotation about Z by 90 degrees with voxels of 2 x 3 x 0.5 mm.
        let a = [
            [0.0, -3.0, 0.0, 10.0],
            [2.0, 0.0, 0.0, -4.0],
            [0.0, 0.0, 0.5, 1.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(spacing_of(&a), [2.0, 3.0, 0.5]);
    }

    #[test]
    fn solve_and_polar() {
        let a = [
            [2.0, 0.0, 30.0, -1.0],
            [0.0, 2.0, 30.0, 2.0],
            [0.0, 0.0, 32.0, 3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let x = solve4(&a, &IDENTITY).unwrap();
        let p = matmul4(&a, &x);
        assert!(allclose4(&p, &IDENTITY, 0.0, 1e-12));
        let r = polar3(&[[2.0, 0.1, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, -1.0]]).unwrap();
        let rtr = matmul3(&transpose3(&r), &r);
        for i in 0..3 {
            for j in 0..3 {
                assert!((rtr[i][j] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        let l = cholesky3(&[[4.0, 2.0, 0.0], [2.0, 5.0, 0.0], [0.0, 0.0, 9.0]]).unwrap();
        assert_eq!(l, [[2.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]);
    }
}
